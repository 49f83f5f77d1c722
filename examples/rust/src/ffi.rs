//! The parts of `flashsdpa.h` and `dlpack.h` this example uses, written out
//! by hand as `#[repr(C)]` mirrors of the C declarations.

use std::os::raw::{c_char, c_int, c_void};

pub const KDL_CPU: c_int = 1;
pub const KDL_FLOAT: u8 = 2;
pub const FSDPA_OK: c_int = 0;
pub const FSDPA_ERROR_INVALID_ARGUMENT: c_int = 1;
pub const FSDPA_ALIGN_BOTTOM_RIGHT: i32 = 1;
pub const FSDPA_MAX_MESSAGE_SIZE: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DLDevice {
    pub device_type: c_int,
    pub device_id: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: c_int,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

/// `fsdpa_params` as this example knows it. The library reads only the
/// first `struct_size` bytes, which fsdpa_params_init_sized sets to
/// size_of::<FsdpaParams>(): a newer library with more fields at the end
/// still takes this struct.
#[repr(C)]
pub struct FsdpaParams {
    pub struct_size: u32,
    pub scale: f32,
    pub causal: i32,
    pub align: i32,
    pub window_left: i64,
    pub window_right: i64,
    pub softcap: f32,
    pub mask: *const DLTensor,
    pub alibi_slopes: *const DLTensor,
    pub cu_seqlens_q: *const DLTensor,
    pub cu_seqlens_k: *const DLTensor,
    pub max_seqlen_q: i64,
    pub max_seqlen_k: i64,
    pub dropout_p: f32,
    pub seed: u64,
    pub offset: u64,
    pub deterministic: i32,
    pub check_finite: i32,
    pub seqused_k: *const DLTensor,
    pub cache_batch_idx: *const DLTensor,
    pub cache_leftpad: *const DLTensor,
    pub block_table: *const DLTensor,
}

extern "C" {
    pub fn fsdpa_params_init_sized(p: *mut FsdpaParams, size: usize);
    pub fn fsdpa_forward_msg(
        p: *const FsdpaParams,
        q: *const DLTensor,
        k: *const DLTensor,
        v: *const DLTensor,
        out: *mut DLTensor,
        lse: *mut DLTensor,
        stream: *mut c_void,
        msg: *mut c_char,
        msg_size: usize,
    ) -> c_int;
    pub fn fsdpa_version() -> *const c_char;
    pub fn fsdpa_backends() -> *const c_char;
}
