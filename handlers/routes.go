package handlers

// routes lists every route of both listeners.
func (s *Server) routes() {
	pub := s.Public
	pub.Use(s.middleware("public")...)

	pub.GET(specPath, openAPI)

	v1 := pub.Group("/v1", limitBody)
	v1.POST("/sessions", s.createSession, s.limitExchange)
	v1.GET("/sessions", s.listOwnSessions, s.limitInvalidHandles)
	v1.DELETE("/sessions", s.endOtherSessions, s.limitInvalidHandles)
	v1.DELETE("/sessions/:id", s.endOwnSession, s.limitInvalidHandles)
	v1.GET("/session", s.getSession, s.limitInvalidHandles)
	v1.DELETE("/session", s.deleteSession)
	v1.GET("/userinfo", s.userInfo, s.limitInvalidHandles)
	v1.POST("/backchannel-logout", s.backchannelLogout, s.limitBackchannel)

	s.cfg.Proxy.useMetrics(s.metrics)
	// Proxied bodies stream at a minimum rate rather than a total time.
	for _, r := range s.cfg.Proxy.Routes() {
		h := s.cfg.Proxy.handlerFor(r)
		pub.Any(r.Prefix, h, streamBody, s.limitInvalidHandles)
		pub.Any(r.Prefix+"/*", h, streamBody, s.limitInvalidHandles)
		s.metrics.useProxyRoutes(r.Prefix, r.Prefix+"/*")
	}

	adm := s.Admin
	adm.Use(s.middleware("admin")...)
	adm.GET("/healthz", s.healthz)
	adm.GET("/readyz", s.readyz)
	adm.GET("/metrics", s.metrics.handler(s.log))
	adm.GET(specPath, openAPI)

	// Every path under /admin/v1, unknown ones included, needs an admin
	// token: the group's middleware runs for its catch-all too, so an
	// unauthenticated caller cannot map the API.
	av1 := adm.Group("/admin/v1", s.requireAdmin)
	av1.GET("/users/:sub/sessions", s.userSessions)
	av1.DELETE("/users/:sub/sessions", s.adminRevokeUser)
	av1.GET("/sessions", s.searchSessions)
	av1.GET("/sessions/:id", s.adminGetSession)
	av1.DELETE("/sessions/:id", s.adminRevokeSession)
	av1.GET("/audit", s.adminAudit)

	s.mountConsole(adm)
}
