// Runs windowed GQA attention through flashsdpa's C ABI on the CPU with cgo,
// checks out and lse against a naive float64 computation, and checks that
// bad arguments come back with their own message in many goroutines at once.
// Exits non-zero on any mismatch.
//
// Go's cgo pointer rules: memory passed to C may not hold Go pointers. A
// DLTensor holds pointers (data, shape, strides), so the structs, the shape
// and stride arrays, the data and fsdpa_params all live in C memory
// (C.calloc); Go reads and writes the data through a slice over that memory.
//
// Build (run.sh does this against a build tree):
//
//	CGO_CFLAGS="-I<flashsdpa include> -I<dlpack include>" \
//	CGO_LDFLAGS="-L<dir of libflashsdpa.so> -Wl,-rpath,<same>" go build
package main

/*
#cgo LDFLAGS: -lflashsdpa
#include <stdlib.h>
#include "flashsdpa/flashsdpa.h"
*/
import "C"

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

const (
	B, Hq, Hk, Sq, Sk, D, Dv = 2, 4, 2, 19, 23, 16, 8
	windowLeft, windowRight  = 5, 2
)

// tensor is a contiguous float32 CPU DLTensor in C memory.
type tensor struct {
	dl   *C.DLTensor
	data []float32 // a view of dl.data
}

func newTensor(shape ...int64) *tensor {
	n := int64(1)
	for _, s := range shape {
		n *= s
	}
	dl := (*C.DLTensor)(C.calloc(1, C.sizeof_DLTensor))
	dims := (*C.int64_t)(C.calloc(C.size_t(len(shape)), C.sizeof_int64_t))
	copy(unsafe.Slice((*int64)(unsafe.Pointer(dims)), len(shape)), shape)
	dl.data = C.calloc(C.size_t(n), C.sizeof_float)
	dl.device.device_type = C.kDLCPU
	dl.ndim = C.int(len(shape))
	dl.dtype.code = C.kDLFloat
	dl.dtype.bits = 32
	dl.dtype.lanes = 1
	dl.shape = dims
	dl.strides = nil // compact row-major
	return &tensor{dl: dl, data: unsafe.Slice((*float32)(dl.data), n)}
}

func (t *tensor) free() {
	C.free(t.dl.data)
	C.free(unsafe.Pointer(t.dl.shape))
	C.free(unsafe.Pointer(t.dl))
}

// newParams returns defaults in C memory. fsdpa_params_init is a C macro,
// which cgo cannot call: the function behind it takes the struct's size.
func newParams() *C.fsdpa_params {
	p := (*C.fsdpa_params)(C.calloc(1, C.sizeof_fsdpa_params))
	C.fsdpa_params_init_sized(p, C.sizeof_fsdpa_params)
	return p
}

// message is a caller-owned buffer for the _msg calls: the message is the
// call's own whichever OS thread the goroutine resumes on.
type message struct{ buf *C.char }

func newMessage() message        { return message{(*C.char)(C.malloc(C.FSDPA_MAX_MESSAGE_SIZE))} }
func (m message) String() string { return C.GoString(m.buf) }
func (m message) free()          { C.free(unsafe.Pointer(m.buf)) }

func forward(p *C.fsdpa_params, q, k, v, out, lse *tensor, m message) C.fsdpa_status {
	return C.fsdpa_forward_msg(p, q.dl, k.dl, v.dl, out.dl, lse.dl, nil, m.buf, C.FSDPA_MAX_MESSAGE_SIZE)
}

// naive is windowed (top-left) GQA attention in float64.
func naive(q, k, v *tensor) (out, lse []float64) {
	scale := 1 / math.Sqrt(D)
	out = make([]float64, B*Hq*Sq*Dv)
	lse = make([]float64, B*Hq*Sq)
	for b := 0; b < B; b++ {
		for h := 0; h < Hq; h++ {
			hk := h / (Hq / Hk)
			for i := 0; i < Sq; i++ {
				lo, hi := max(0, i-windowLeft), min(Sk-1, i+windowRight)
				s := make([]float64, hi-lo+1)
				m := math.Inf(-1)
				for j := lo; j <= hi; j++ {
					dot := 0.0
					for d := 0; d < D; d++ {
						dot += float64(q.data[((b*Hq+h)*Sq+i)*D+d]) * float64(k.data[((b*Hk+hk)*Sk+j)*D+d])
					}
					s[j-lo] = scale * dot
					m = math.Max(m, s[j-lo])
				}
				sum := 0.0
				for _, x := range s {
					sum += math.Exp(x - m)
				}
				row := (b*Hq+h)*Sq + i
				lse[row] = m + math.Log(sum)
				for d := 0; d < Dv; d++ {
					o := 0.0
					for j := lo; j <= hi; j++ {
						o += math.Exp(s[j-lo]-m) / sum * float64(v.data[((b*Hk+hk)*Sk+j)*Dv+d])
					}
					out[row*Dv+d] = o
				}
			}
		}
	}
	return out, lse
}

// tolerance is the project's rule: 2x the error of a float32 computation
// (rounding the exact result, plus float32 accumulation over n terms).
func tolerance(ref []float64, n int) float64 {
	round, maxAbs := 0.0, 1.0
	for _, x := range ref {
		round = math.Max(round, math.Abs(float64(float32(x))-x))
		maxAbs = math.Max(maxAbs, math.Abs(x))
	}
	return 2 * (round + math.Ldexp(1, -24)*math.Sqrt(float64(n))*maxAbs*8)
}

func maxErr(got []float32, ref []float64) float64 {
	e := 0.0
	for i, r := range ref {
		e = math.Max(e, math.Abs(float64(got[i])-r))
	}
	return e
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// concurrentErrors runs failing calls in many goroutines, each with its
// own bad window_left, yielding between the call and reading the message
// (so goroutines move between OS threads); each must read its own message.
func concurrentErrors(q, k, v, out, lse *tensor) (wrong, lastErrorWrong int) {
	const goroutines, calls = 32, 50
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			p, m := newParams(), newMessage()
			defer C.free(unsafe.Pointer(p))
			defer m.free()
			p.window_left = C.int64_t(-2 - g)
			want := fmt.Sprintf("window_left: %d is negative", -2-g)
			for c := 0; c < calls; c++ {
				status := forward(p, q, k, v, out, lse, m)
				runtime.Gosched()
				last := C.GoString(C.fsdpa_last_error())
				mu.Lock()
				if status != C.FSDPA_ERROR_INVALID_ARGUMENT || !strings.Contains(m.String(), want) {
					wrong++
				}
				if !strings.Contains(last, want) {
					lastErrorWrong++
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	return wrong, lastErrorWrong
}

func main() {
	q, k, v := newTensor(B, Hq, Sq, D), newTensor(B, Hk, Sk, D), newTensor(B, Hk, Sk, Dv)
	out, lse := newTensor(B, Hq, Sq, Dv), newTensor(B, Hq, Sq)
	for _, t := range []*tensor{q, k, v, out, lse} {
		defer t.free()
	}
	state := uint64(7)
	for _, t := range []*tensor{q, k, v} {
		for i := range t.data {
			state = state*6364136223846793005 + 1442695040888963407
			t.data[i] = float32(float64(state>>40)/(1<<24)*2 - 1)
		}
	}

	p, m := newParams(), newMessage()
	defer C.free(unsafe.Pointer(p))
	defer m.free()
	p.window_left, p.window_right = windowLeft, windowRight
	if status := forward(p, q, k, v, out, lse, m); status != C.FSDPA_OK {
		fmt.Fprintf(os.Stderr, "fsdpa_forward failed (%d): %s\n", status, m)
		os.Exit(1)
	}
	refOut, refLse := naive(q, k, v)
	n := max(Sk, D)
	outErr, lseErr := maxErr(out.data, refOut), maxErr(lse.data, refLse)
	outTol, lseTol := tolerance(refOut, n), tolerance(refLse, n)
	fmt.Printf("flashsdpa %s (backends: %s) from Go: out error %.3e (tolerance %.3e), lse error %.3e (tolerance %.3e)\n",
		C.GoString(C.fsdpa_version()), C.GoString(C.fsdpa_backends()), outErr, outTol, lseErr, lseTol)
	ok := outErr <= outTol && lseErr <= lseTol

	wrong, lastWrong := concurrentErrors(q, k, v, out, lse)
	fmt.Printf("concurrent bad calls: %d wrong messages through the caller's buffer "+
		"(fsdpa_last_error read after a yield: %d wrong, informational)\n", wrong, lastWrong)
	ok = ok && wrong == 0
	if !ok {
		fmt.Fprintln(os.Stderr, "FAILED")
		os.Exit(1)
	}
}
