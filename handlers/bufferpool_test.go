package handlers

import "testing"

// The copy buffers are one size: a buffer of another capacity given back
// is dropped, and every buffer lent is the full 32 KiB.
func TestBufferPool(t *testing.T) {
	p := copyBuffers
	b := p.Get()
	if len(b) != copyBufferSize {
		t.Fatalf("Get() = %d bytes, want %d", len(b), copyBufferSize)
	}
	p.Put(b[:10])
	p.Put(make([]byte, 100))
	for range 3 {
		if got := p.Get(); len(got) != copyBufferSize || cap(got) != copyBufferSize {
			t.Fatalf("Get() after a foreign Put = len %d cap %d, want %d", len(got), cap(got), copyBufferSize)
		}
	}
}
