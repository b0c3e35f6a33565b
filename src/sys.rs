//! Every system call loopchat makes beyond std and mio, and the only module
//! allowed `unsafe` (`#![deny(unsafe_code)]` holds everywhere else): the
//! open-file limit, listeners with SO_REUSEPORT and SO_SNDBUF, connects from a
//! chosen source address (the load generator), and this or another process's
//! CPU time, RSS and descriptors from /proc.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns (old soft, new soft).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

/// A non-blocking listener; with `reuse_port` several processes may bind the same
/// address and the kernel spreads new connections over them. A non-zero
/// `send_buffer` sets SO_SNDBUF, which accepted connections inherit.
pub fn listener(
    addr: SocketAddr,
    reuse_port: bool,
    send_buffer: usize,
) -> io::Result<mio::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned by the std listener below or closed on error.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; wrapping it closes it on every path.
    let owned: std::net::TcpListener = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    set_opt(fd, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_opt(fd, libc::SO_REUSEPORT, 1)?;
    }
    if send_buffer > 0 {
        let n = libc::c_int::try_from(send_buffer).unwrap_or(libc::c_int::MAX);
        set_opt(fd, libc::SO_SNDBUF, n)?;
    }
    // Accepted sockets inherit it on Linux: one setsockopt here instead of one
    // per connection (the test `accepted_sockets_inherit_nodelay` holds it).
    set_opt_at(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on our own socket.
    if unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mio::net::TcpListener::from_std(owned))
}

fn set_opt(fd: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_opt_at(fd, libc::SOL_SOCKET, opt, value)
}

fn set_opt_at(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Write a connection's last bytes, to be followed at once by `close`: on
/// Linux with `MSG_MORE`, so the kernel holds the data for the FIN that
/// `close` queues and sends both in one segment instead of two (one less
/// segment out, and one less run of the peer's receive path and ACK).
/// Elsewhere a plain write.
pub fn send_last(sock: &mut mio::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `buf` is valid for `buf.len()` bytes and the descriptor is
        // the open socket `sock` owns for the duration of the call.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::io::Write;
        sock.write(buf)
    }
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Open file descriptors of this process: the size `stat` reports for
/// `/proc/self/fd`, which Linux 6.2 and later set to the count (one system
/// call, whatever the count). None on older kernels (they report 0), rather
/// than listing the directory, whose cost grows with the connections.
pub fn open_fds() -> Option<u64> {
    let n = std::fs::metadata("/proc/self/fd").ok()?.len();
    (n > 0).then_some(n)
}

/// The soft RLIMIT_NOFILE: the most descriptors this process may open.
pub fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some(lim.rlim_cur)
}

/// User plus system CPU time of this process, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// Fill `buf` from the OS's random source (`getrandom(2)`, falling back to
/// `/dev/urandom`). Errors only when neither works.
pub fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        use std::io::Read as _;
        return std::fs::File::open("/dev/urandom")?.read_exact(&mut buf[filled..]);
    }
    Ok(())
}

/// The terminal settings of stdin, if it is a terminal.
pub fn tty_settings() -> Option<libc::termios> {
    // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 and a valid pointer; tcgetattr only writes to it.
    (unsafe { libc::tcgetattr(0, &mut t) } == 0).then_some(t)
}

/// Put back stdin's terminal settings read by [`tty_settings`].
pub fn restore_tty(t: &libc::termios) {
    // SAFETY: fd 0 and a termios read from it by tcgetattr.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
}

/// Hour, minute and second of Unix time `secs` in the local time zone.
pub fn local_time_of_day(secs: i64) -> Option<(i32, i32, i32)> {
    let t = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; `localtime_r` only writes to it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; `localtime_r` is the
    // thread-safe variant and keeps no reference to them.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some((tm.tm_hour, tm.tm_min, tm.tm_sec))
}

/// Columns of the terminal on standard output, if it is one.
pub fn terminal_columns() -> Option<usize> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ only writes to it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 and a valid pointer to a winsize, as TIOCGWINSZ expects.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

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

    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let l = listener("127.0.0.1:0".parse().unwrap(), false, 0).unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        // Bounded: the connection is already in the backlog once connect returned.
        let mut accepted = None;
        for _ in 0..1000 {
            match l.accept() {
                Ok((s, _)) => {
                    accepted = Some(s);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        let s = accepted.expect("accepted");
        assert!(s.nodelay().unwrap(), "accepted socket lacks TCP_NODELAY");
        assert!(!client.nodelay().unwrap());
    }

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
