package handlers

// routes lists every route of both listeners.
func (s *Server) routes() {
	pub := s.Public
	pub.Use(s.accessLog)

	v1 := pub.Group("/v1", limitBody)
	v1.POST("/sessions", s.createSession)
	v1.GET("/session", s.getSession)
	v1.DELETE("/session", s.deleteSession)
	v1.GET("/userinfo", s.userInfo)

	for _, r := range s.cfg.Proxy.Routes() {
		pub.Any(r.Prefix, s.cfg.Proxy.Handler)
		pub.Any(r.Prefix+"/*", s.cfg.Proxy.Handler)
	}

	adm := s.Admin
	adm.Use(s.accessLog)
	adm.GET("/healthz", s.healthz)
	adm.GET("/readyz", s.readyz)
}
