//! The system calls `sluice bench` makes outside monoio: which CPUs it may
//! run on, `IP_BIND_ADDRESS_NO_PORT`, its own CPU time, and the wall clock
//! that `ts_ns` is measured against.
//!
//! Cold, except [`now_ns`] (once per read on every connection). The only
//! `unsafe` of the load generator lives here.

/// CPUs this process may run on (its affinity mask), or `0..n` for the `n`
/// CPUs the standard library sees where the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind(2) picks the address only, and connect(2)
/// the port, per (source, destination) pair.
pub fn set_bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is owned by `socket`, which outlives the call; the
    // option value is a c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_s() -> f64 {
    // SAFETY: `rusage` is plain data for which all zeroes is a valid value;
    // getrusage writes only the struct we pass, which lives on this stack.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (rc, ru)
    };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Now, in CLOCK_REALTIME ns: the clock of `ts_ns` in published rows.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
