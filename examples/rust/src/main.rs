//! Runs causal GQA attention through flashsdpa's C ABI on the CPU, with
//! q/k/v/out stored [batch, seq, heads, dim] (passed as strided views of the
//! logical [batch, heads, seq, dim]), checks out and lse against a naive
//! float64 computation, and checks that a bad argument comes back as a
//! status plus a message naming it. Exits non-zero on any mismatch.

mod ffi;

use std::ffi::CStr;
use std::os::raw::{c_char, c_void};
use std::ptr;

const B: usize = 2;
const HQ: usize = 4;
const HK: usize = 2;
const SQ: usize = 13;
const SK: usize = 29;
const D: usize = 16;
const DV: usize = 8;

/// A float32 CPU tensor: its buffer, logical shape and strides (elements).
struct Tensor {
    data: Vec<f32>,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

impl Tensor {
    /// Logical [b, h, s, d] stored as [b, s, h, d].
    fn bshd(b: usize, h: usize, s: usize, d: usize) -> Tensor {
        let (b, h, s, d) = (b as i64, h as i64, s as i64, d as i64);
        Tensor {
            data: vec![0.0; (b * h * s * d) as usize],
            shape: vec![b, h, s, d],
            strides: vec![s * h * d, d, h * d, 1],
        }
    }
    fn contiguous(shape: &[usize]) -> Tensor {
        let shape: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len() - 1).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        Tensor { data: vec![0.0; shape.iter().product::<i64>() as usize], shape, strides }
    }
    fn at(&self, idx: &[usize]) -> f32 {
        self.data[idx.iter().zip(&self.strides).map(|(&i, &s)| i * s as usize).sum::<usize>()]
    }
    /// A DLTensor view; valid while self is neither moved nor resized.
    fn dl(&mut self) -> ffi::DLTensor {
        ffi::DLTensor {
            data: self.data.as_mut_ptr() as *mut c_void,
            device: ffi::DLDevice { device_type: ffi::KDL_CPU, device_id: 0 },
            ndim: self.shape.len() as i32,
            dtype: ffi::DLDataType { code: ffi::KDL_FLOAT, bits: 32, lanes: 1 },
            shape: self.shape.as_mut_ptr(),
            strides: self.strides.as_mut_ptr(),
            byte_offset: 0,
        }
    }
}

/// Deterministic values in [-1, 1).
fn fill(t: &mut Tensor, state: &mut u64) {
    for x in t.data.iter_mut() {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *x = ((*state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32;
    }
}

fn default_params() -> ffi::FsdpaParams {
    let mut p = std::mem::MaybeUninit::<ffi::FsdpaParams>::uninit();
    unsafe {
        ffi::fsdpa_params_init_sized(p.as_mut_ptr(), std::mem::size_of::<ffi::FsdpaParams>());
        p.assume_init()
    }
}

/// fsdpa_forward_msg: the status and the call's own message.
fn forward(p: &ffi::FsdpaParams, q: &mut Tensor, k: &mut Tensor, v: &mut Tensor,
           out: &mut Tensor, lse: &mut Tensor) -> (i32, String) {
    let (dq, dk, dv) = (q.dl(), k.dl(), v.dl());
    let (mut dout, mut dlse) = (out.dl(), lse.dl());
    let mut msg = vec![0 as c_char; ffi::FSDPA_MAX_MESSAGE_SIZE];
    let status = unsafe {
        ffi::fsdpa_forward_msg(p, &dq, &dk, &dv, &mut dout, &mut dlse, ptr::null_mut(),
                               msg.as_mut_ptr(), msg.len())
    };
    let text = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy().into_owned();
    (status, text)
}

/// Causal (bottom-right) GQA attention in float64: (out [b,h,i,d], lse [b,h,i]).
fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (D as f64).sqrt();
    let mut out = vec![0.0; B * HQ * SQ * DV];
    let mut lse = vec![0.0; B * HQ * SQ];
    for b in 0..B {
        for h in 0..HQ {
            let hk = h / (HQ / HK);
            for i in 0..SQ {
                let last = i + (SK - SQ); // bottom-right diagonal
                let s: Vec<f64> = (0..=last)
                    .map(|j| scale * (0..D).map(|d| q.at(&[b, h, i, d]) as f64 * k.at(&[b, hk, j, d]) as f64).sum::<f64>())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - m).exp()).sum();
                lse[(b * HQ + h) * SQ + i] = m + sum.ln();
                for d in 0..DV {
                    let o: f64 = s.iter().enumerate().map(|(j, x)| (x - m).exp() / sum * v.at(&[b, hk, j, d]) as f64).sum();
                    out[((b * HQ + h) * SQ + i) * DV + d] = o;
                }
            }
        }
    }
    (out, lse)
}

/// The project's tolerance: 2x the error of a float32 computation (rounding
/// the exact result, plus float32 accumulation over `len` terms).
fn tolerance(reference: &[f64], len: usize) -> f64 {
    let round = reference.iter().map(|&x| ((x as f32) as f64 - x).abs()).fold(0.0, f64::max);
    let max_abs = reference.iter().map(|x| x.abs()).fold(1.0, f64::max);
    let accum = f64::powi(2.0, -24) * (len as f64).sqrt() * max_abs * 8.0;
    2.0 * (round + accum)
}

fn main() {
    let mut q = Tensor::bshd(B, HQ, SQ, D);
    let mut k = Tensor::bshd(B, HK, SK, D);
    let mut v = Tensor::bshd(B, HK, SK, DV);
    let mut out = Tensor::bshd(B, HQ, SQ, DV);
    let mut lse = Tensor::contiguous(&[B, HQ, SQ]);
    let mut state = 42u64;
    fill(&mut q, &mut state);
    fill(&mut k, &mut state);
    fill(&mut v, &mut state);

    let mut p = default_params();
    p.causal = 1;
    p.align = ffi::FSDPA_ALIGN_BOTTOM_RIGHT;
    let (status, msg) = forward(&p, &mut q, &mut k, &mut v, &mut out, &mut lse);
    if status != ffi::FSDPA_OK {
        eprintln!("fsdpa_forward failed ({status}): {msg}");
        std::process::exit(1);
    }

    let (ref_out, ref_lse) = naive(&q, &k, &v);
    let len = SK.max(D);
    let mut out_err: f64 = 0.0;
    for b in 0..B {
        for h in 0..HQ {
            for i in 0..SQ {
                for d in 0..DV {
                    let r = ref_out[((b * HQ + h) * SQ + i) * DV + d];
                    out_err = out_err.max((out.at(&[b, h, i, d]) as f64 - r).abs());
                }
            }
        }
    }
    let lse_err = lse.data.iter().zip(&ref_lse).map(|(&x, &r)| (x as f64 - r).abs()).fold(0.0, f64::max);
    let (out_tol, lse_tol) = (tolerance(&ref_out, len), tolerance(&ref_lse, len));
    let version = unsafe { CStr::from_ptr(ffi::fsdpa_version()) }.to_string_lossy();
    let backends = unsafe { CStr::from_ptr(ffi::fsdpa_backends()) }.to_string_lossy();
    println!("flashsdpa {version} (backends: {backends}) from Rust: out error {out_err:.3e} (tolerance {out_tol:.3e}), lse error {lse_err:.3e} (tolerance {lse_tol:.3e})");
    let mut ok = out_err <= out_tol && lse_err <= lse_tol;

    // Bad input: a status and a message naming the argument, no crash.
    p.window_left = -7;
    let (status, msg) = forward(&p, &mut q, &mut k, &mut v, &mut out, &mut lse);
    println!("window_left = -7: status {status}, message \"{msg}\"");
    ok &= status == ffi::FSDPA_ERROR_INVALID_ARGUMENT && msg.contains("window_left");
    if !ok {
        eprintln!("FAILED");
        std::process::exit(1);
    }
}
