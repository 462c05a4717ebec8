package handlers

import "sync"

// copyBufferSize is the size of the buffer that copies a proxied body, the
// size ReverseProxy allocates itself when it has no pool.
const copyBufferSize = 32 << 10

// copyBuffers lends the proxy its copy buffers, so that a proxied request
// does not allocate 32 KiB of its own. The pool holds pointers, so that
// putting a buffer back does not allocate either.
var copyBuffers = &bufferPool{pool: sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}}

// bufferPool is an httputil.BufferPool over sync.Pool.
type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte { return *p.pool.Get().(*[]byte) }

func (p *bufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		// Not one of ours: keep the pool's buffers one size.
		return
	}
	b = b[:copyBufferSize]
	p.pool.Put(&b)
}
