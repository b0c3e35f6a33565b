//! System calls the load generator needs beyond mio: connecting from a chosen
//! source address, its own CPU time, and a target process's CPU time and RSS.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;

/// Linux `IP_BIND_ADDRESS_NO_PORT`: bind the address now, pick the port at
/// `connect`, so ports are shared across destinations (4-tuple uniqueness).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Start a non-blocking connect to `addr`, from `source` when given (its port is
/// chosen by the kernel at connect time). The connection completes later: wait for
/// the socket to become writable, then check `take_error` and `peer_addr`.
pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    let (Some(src), SocketAddr::V4(dst)) = (source, addr) else {
        return mio::net::TcpStream::connect(addr);
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream below or
    // closed on every error path.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // From here the std stream owns the descriptor and closes it on drop.
    // SAFETY: `fd` is a fresh, valid socket descriptor owned by nobody else.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a c_int) for the given length. Failure only
    // means the kernel picks the port at bind time, which still works.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let src_sa = sockaddr_in(src, 0);
    // SAFETY: bind reads a sockaddr_in of the stated length.
    if unsafe {
        libc::bind(
            fd,
            (&src_sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let dst_sa = sockaddr_in(*dst.ip(), dst.port());
    // SAFETY: connect reads a sockaddr_in of the stated length.
    if unsafe {
        libc::connect(
            fd,
            (&dst_sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(mio::net::TcpStream::from_std(stream))
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// CPU seconds (user + system) this process has used so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A sample of another process: CPU seconds used so far (all threads) and RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime from `/proc/PID/stat`, in seconds.
    pub cpu_secs: f64,
    /// VmRSS from `/proc/PID/status`, in bytes.
    pub rss_bytes: u64,
}

/// Read `/proc/PID/stat` and `/proc/PID/status`; None when the process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(ProcSample {
        cpu_secs: parse_stat_cpu(&stat)? as f64 / ticks,
        rss_bytes: parse_status_rss_kb(&status)? * 1024,
    })
}

/// utime + stime (clock ticks) from a `/proc/PID/stat` line. The command name
/// in parentheses may hold spaces, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in kB from `/proc/PID/status`.
pub fn parse_status_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_parse() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(320));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    5120 kB\nThreads: 1\n";
        assert_eq!(parse_status_rss_kb(status), Some(5120));
        assert_eq!(parse_status_rss_kb("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = proc_sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
        assert!(self_cpu_secs() >= 0.0);
    }
}
