//! `scripts/bench`'s launcher: runs a command and writes its wall time, CPU
//! time (user + sys) and peak RSS, from `wait4`, to a file as JSON.
//!
//! ```sh
//! bench_measure RESULT_JSON PROGRAM [ARGS...]
//! ```
//!
//! Why a launcher: on Linux a child's peak RSS (`ru_maxrss`) starts at the
//! RSS of the process that forked it (the high-water mark survives `exec`),
//! so a child of the Python driver would report at least the driver's
//! ~18 MiB. This launcher is ~2 MiB, below every side's own peak. The
//! child's stdin, stdout and stderr are this process's.

use std::time::Instant;

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

/// Linux `struct rusage` (x86_64 / aarch64 layout).
#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    rest: [i64; 13],
}

unsafe extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, usage: *mut Rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [result, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_measure RESULT_JSON PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let started = Instant::now();
    let child = match std::process::Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_measure: cannot start {program}: {e}");
            std::process::exit(127);
        }
    };
    let mut status = 0i32;
    let mut usage = Rusage::default();
    // SAFETY: a child of this process; `status` and `usage` are valid and writable.
    let pid = unsafe { wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    if pid < 0 {
        eprintln!("bench_measure: wait4: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // Exit code, or 128 + signal.
    let rc = if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    };
    let secs = |t: &Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    let json = format!(
        "{{\"rc\":{rc},\"wall\":{wall:.6},\"user\":{:.6},\"sys\":{:.6},\"maxrss_kib\":{}}}\n",
        secs(&usage.utime),
        secs(&usage.stime),
        usage.maxrss
    );
    if let Err(e) = std::fs::write(result, json) {
        eprintln!("bench_measure: cannot write {result}: {e}");
        std::process::exit(1);
    }
    std::process::exit(rc);
}
