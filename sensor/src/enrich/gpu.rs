//! GPUs through NVML, loaded at run time with `dlopen`: a node without a GPU or without
//! NVIDIA's driver runs the same binary and says "unavailable" in its status. NVML calls can
//! block on the driver, so they run on a thread of their own, once a second; the pipeline
//! reads the latest snapshot: each process's share of each GPU's streaming multiprocessors
//! and its GPU memory.
//!
//! A GPU in MIG mode reports use per MIG instance, not per process: its processes are
//! listed (with their memory) but carry no utilisation, and the status says so.
use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_ulonglong, c_void},
    sync::{Arc, Mutex},
    time::Duration,
};

/// NVML's library name as the driver installs it.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// One process on one GPU, as NVML last reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    pub gpu: u32,
    /// Share of the GPU's SMs over NVML's last sampling period (1.0 = all of it); `None` on a
    /// MIG GPU, or when NVML had no sample.
    pub share: Option<f64>,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// For the status: what was found, or why GPUs are unavailable.
    pub status: String,
    pub devices: u32,
    pub processes: Vec<GpuProcess>,
    /// NVML calls that failed since start.
    pub errors: u64,
}

/// The pipeline's handle on the NVML thread.
pub struct Gpus {
    shared: Arc<Mutex<Snapshot>>,
}

impl Gpus {
    /// Starts polling through `library` (`None`: GPUs are not looked at).
    pub fn spawn(library: Option<String>) -> Self {
        let shared = Arc::new(Mutex::new(Snapshot {
            status: "not looked at (nvml_library is empty)".into(),
            ..Default::default()
        }));
        if let Some(lib) = library {
            let out = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("minerwatch-nvml".into())
                .spawn(move || poll(&lib, &out));
            if let Err(e) = spawned
                && let Ok(mut s) = shared.lock()
            {
                s.status = format!("unavailable: cannot start the NVML thread: {e}");
            }
        }
        Gpus { shared }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

type Device = *mut c_void;

/// One entry of `nvmlDeviceGetComputeRunningProcesses_v3`, as read from the driver's
/// array: `pid` at 0 and `usedGpuMemory` at 8 in both layouts the driver may write
/// (`nvmlProcessInfo_v2_t`, 24 bytes; drivers of the 12.2 header era add
/// `usedGpuCcProtectedMemory`, 32 bytes).
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: u32,
    used_gpu_memory: u64,
}

/// The largest entry any driver writes: the array is sized by it, so a driver with the
/// longer layout never writes past it.
const PROCESS_INFO_MAX: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UtilSample {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

const NVML_SUCCESS: c_int = 0;
const NVML_ERROR_NOT_FOUND: c_int = 6;
const NVML_ERROR_INSUFFICIENT_SIZE: c_int = 7;

/// The NVML entry points used, resolved once.
struct Nvml {
    _lib: *mut c_void,
    init: unsafe extern "C" fn() -> c_int,
    count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    handle: unsafe extern "C" fn(c_uint, *mut Device) -> c_int,
    driver: unsafe extern "C" fn(*mut c_char, c_uint) -> c_int,
    mig: unsafe extern "C" fn(Device, *mut c_uint, *mut c_uint) -> c_int,
    procs: unsafe extern "C" fn(Device, *mut c_uint, *mut u8) -> c_int,
    /// Bytes per process entry this driver writes (see [`ProcessInfo`]).
    process_info_size: usize,
    util: unsafe extern "C" fn(Device, *mut UtilSample, *mut c_uint, c_ulonglong) -> c_int,
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl call on this thread.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Nvml {
    fn load(library: &str) -> Result<Nvml, String> {
        let name = CString::new(library).map_err(|_| "the library name has a NUL".to_string())?;
        // SAFETY: a valid C string; RTLD_NOW resolves everything now or fails.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(format!("cannot load {library}: {}", dlerror()));
        }
        let sym = |n: &str| -> Result<*mut c_void, String> {
            let c = CString::new(n).map_err(|_| n.to_string())?;
            // SAFETY: `lib` is a live handle from dlopen; `c` is a valid C string.
            let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
            if p.is_null() {
                Err(format!("{library} has no {n}: not NVML, or too old"))
            } else {
                Ok(p)
            }
        };
        // SAFETY (each transmute): the symbol is NVML's function of that name, whose C
        // signature is the one written here (NVML's public header).
        unsafe {
            Ok(Nvml {
                init: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(sym(
                    "nvmlInit_v2",
                )?),
                count: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_uint) -> c_int>(
                    sym("nvmlDeviceGetCount_v2")?,
                ),
                handle: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(c_uint, *mut Device) -> c_int,
                >(sym("nvmlDeviceGetHandleByIndex_v2")?),
                driver: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_char, c_uint) -> c_int,
                >(sym("nvmlSystemGetDriverVersion")?),
                mig: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Device, *mut c_uint, *mut c_uint) -> c_int,
                >(sym("nvmlDeviceGetMigMode")?),
                procs: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(Device, *mut c_uint, *mut u8) -> c_int,
                >(sym("nvmlDeviceGetComputeRunningProcesses_v3")?),
                // The drivers that write the 32-byte entry are told apart by what they
                // export: confidential-computing memory info, and not yet the process
                // detail list that replaced the v3 call.
                process_info_size: if sym("nvmlDeviceGetConfComputeMemSizeInfo").is_ok()
                    && sym("nvmlDeviceGetRunningProcessDetailList").is_err()
                {
                    32
                } else {
                    24
                },
                util: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(
                        Device,
                        *mut UtilSample,
                        *mut c_uint,
                        c_ulonglong,
                    ) -> c_int,
                >(sym("nvmlDeviceGetProcessUtilization")?),
                _lib: lib,
            })
        }
    }
}

/// How often NVML is asked.
const EVERY: Duration = Duration::from_secs(1);

fn set(out: &Mutex<Snapshot>, f: impl FnOnce(&mut Snapshot)) {
    if let Ok(mut s) = out.lock() {
        f(&mut s);
    }
}

fn poll(library: &str, out: &Mutex<Snapshot>) {
    let nvml = match Nvml::load(library) {
        Ok(n) => n,
        Err(why) => {
            tracing::info!(%why, "no GPUs: NVML is not there");
            return set(out, |s| s.status = format!("unavailable: {why}"));
        }
    };
    // SAFETY: NVML's init takes no arguments.
    let r = unsafe { (nvml.init)() };
    if r != NVML_SUCCESS {
        return set(out, |s| {
            s.status =
                format!("unavailable: nvmlInit failed (NVML error {r}; is the driver loaded?)")
        });
    }
    let mut driver = [0 as c_char; 96];
    // SAFETY: the buffer and its length are valid.
    let driver =
        if unsafe { (nvml.driver)(driver.as_mut_ptr(), driver.len() as c_uint) } == NVML_SUCCESS {
            // SAFETY: NVML wrote a NUL-terminated string into the buffer.
            unsafe { CStr::from_ptr(driver.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown".into()
        };
    let mut last_seen: Vec<c_ulonglong> = Vec::new();
    loop {
        let mut errors = 0;
        let mut count: c_uint = 0;
        // SAFETY: valid out-pointer.
        if unsafe { (nvml.count)(&mut count) } != NVML_SUCCESS {
            errors += 1;
        }
        last_seen.resize(count as usize, 0);
        let mut procs = Vec::new();
        let mut mig_gpus = Vec::new();
        for i in 0..count {
            let mut dev: Device = std::ptr::null_mut();
            // SAFETY: valid index range and out-pointer.
            if unsafe { (nvml.handle)(i, &mut dev) } != NVML_SUCCESS {
                errors += 1;
                continue;
            }
            let (mut cur, mut pending) = (0, 0);
            // SAFETY: a device handle from NVML and valid out-pointers.
            let mig =
                unsafe { (nvml.mig)(dev, &mut cur, &mut pending) } == NVML_SUCCESS && cur == 1;
            if mig {
                mig_gpus.push(i);
            }
            let running = running(&nvml, dev).unwrap_or_else(|| {
                errors += 1;
                Vec::new()
            });
            let shares = if mig {
                Vec::new()
            } else {
                utilisation(&nvml, dev, &mut last_seen[i as usize]).unwrap_or_else(|| {
                    errors += 1;
                    Vec::new()
                })
            };
            let mut pids: Vec<u32> = running.iter().map(|p| p.pid).collect();
            pids.extend(shares.iter().map(|s| s.0));
            pids.sort_unstable();
            pids.dedup();
            for pid in pids {
                procs.push(GpuProcess {
                    pid,
                    gpu: i,
                    share: shares
                        .iter()
                        .find(|s| s.0 == pid)
                        .map(|s| f64::from(s.1.min(100)) / 100.0),
                    memory_bytes: running
                        .iter()
                        .find(|p| p.pid == pid)
                        .map_or(0, |p| p.used_gpu_memory),
                });
            }
        }
        let mut status = format!(
            "{count} GPU{} (NVML, driver {driver})",
            if count == 1 { "" } else { "s" }
        );
        if !mig_gpus.is_empty() {
            let list: Vec<String> = mig_gpus.iter().map(|g| g.to_string()).collect();
            status += &format!(
                "; GPU {} in MIG mode: NVML reports use per MIG instance there, not per process, so its processes carry no utilisation",
                list.join(", ")
            );
        }
        set(out, |s| {
            s.status = status;
            s.devices = count;
            s.processes = procs;
            s.errors += errors;
        });
        std::thread::sleep(EVERY);
    }
}

/// The compute processes on `dev`, with their memory.
fn running(nvml: &Nvml, dev: Device) -> Option<Vec<ProcessInfo>> {
    let mut n: c_uint = 0;
    // SAFETY: asking for the count: a zero count and a null array are allowed.
    let r = unsafe { (nvml.procs)(dev, &mut n, std::ptr::null_mut()) };
    if r == NVML_SUCCESS {
        return Some(Vec::new());
    }
    if r != NVML_ERROR_INSUFFICIENT_SIZE {
        return None;
    }
    // Room for a few that start between the calls, at the largest entry size.
    let room = n as usize + 8;
    let mut buf = vec![0u8; room * PROCESS_INFO_MAX];
    let mut n = room as c_uint;
    // SAFETY: `buf` holds `room` entries of any layout a driver writes.
    let r = unsafe { (nvml.procs)(dev, &mut n, buf.as_mut_ptr()) };
    if r != NVML_SUCCESS {
        return None;
    }
    let size = nvml.process_info_size;
    Some(
        buf.chunks_exact(size)
            .take((n as usize).min(room))
            .map(|e| ProcessInfo {
                pid: u32::from_ne_bytes([e[0], e[1], e[2], e[3]]),
                used_gpu_memory: u64::from_ne_bytes([
                    e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15],
                ]),
            })
            .collect(),
    )
}

/// (pid, SM utilisation %) on `dev` since `last_seen` (NVML's microsecond timestamps).
fn utilisation(nvml: &Nvml, dev: Device, last_seen: &mut c_ulonglong) -> Option<Vec<(u32, u32)>> {
    let mut n: c_uint = 0;
    // SAFETY: asking for the count with a null array.
    let r = unsafe { (nvml.util)(dev, std::ptr::null_mut(), &mut n, *last_seen) };
    match r {
        NVML_ERROR_NOT_FOUND => return Some(Vec::new()),
        NVML_ERROR_INSUFFICIENT_SIZE | NVML_SUCCESS => {}
        _ => return None,
    }
    if n == 0 {
        return Some(Vec::new());
    }
    let mut buf = vec![UtilSample::default(); n as usize + 8];
    let mut n = buf.len() as c_uint;
    // SAFETY: `buf` holds `n` samples of NVML's layout.
    let r = unsafe { (nvml.util)(dev, buf.as_mut_ptr(), &mut n, *last_seen) };
    match r {
        NVML_SUCCESS => {}
        NVML_ERROR_NOT_FOUND => return Some(Vec::new()),
        _ => return None,
    }
    buf.truncate(n as usize);
    *last_seen = buf.iter().map(|s| s.time_stamp).max().unwrap_or(*last_seen);
    // NVML keeps several samples per process: the latest of each is its use now.
    buf.sort_by_key(|s| std::cmp::Reverse(s.time_stamp));
    let mut latest: Vec<(u32, u32)> = Vec::new();
    for s in &buf {
        if !latest.iter().any(|(pid, _)| *pid == s.pid) {
            latest.push((s.pid, s.sm_util));
        }
    }
    Some(latest)
}
