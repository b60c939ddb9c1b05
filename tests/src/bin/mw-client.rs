//! Drives one behaviour per run for the end-to-end tests, so each has its own pid:
//! `stratum ADDR write|sendto|sendmsg|writev`, `socks5 PROXY TARGET`, `http ADDR`,
//! `connect ADDR`, `burn SECONDS`, `hold ADDR`, `bytewise ADDR` (the login one byte per
//! packet), `leader-exit ADDR` (the leader calls `pthread_exit`, a thread sends the login),
//! `udp ADDR` (one datagram unconnected, one connected), `thread-exec PROG ARGS…` (a
//! non-leader thread execs), `memfd-exec PROG ARGS…` (PROG copied into a memfd, run with
//! `execveat(fd, "", …, AT_EMPTY_PATH)`), `connect-storm ADDR N` (N short connections),
//! `payload-storm ADDR N` (N connections sending 2 KiB each), `padded ADDR one|split|big`
//! (2 KiB of whitespace before the login, in the login's write or in writes of their own;
//! 24 KiB in the login's write), `interval SECONDS` (interval arithmetic: a busy loop that
//! rounds each bound of an interval sum down and up, switching the SSE rounding mode
//! thousands of times a second, as CGAL and Boost.Interval do), `resolve NAME PORT` (looks
//! NAME up through the system resolver, as a miner given a pool's name does, and connects to
//! the first address), `rename NAME` (the main thread takes NAME with `prctl(PR_SET_NAME)`,
//! then waits 3 s), `rename-comm NAME` (a second thread writes NAME to `/proc/self/comm`,
//! renaming the main thread, then the process waits 3 s), `rename-thread NAME` (a second
//! thread names itself NAME, as thread pools do, then the process waits 2 s), `heartbeat ADDR SECONDS` (a thread burns a core while
//! the main thread asks ADDR a line every 700 ms and reads its answer, as a licence client
//! does).
use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    time::{Duration, Instant},
};

const LOGIN: &[u8] = include_bytes!("../../fixtures/xmrig-6.16.0-login.bin");
const KEEPALIVE: &[u8] =
    b"{\"id\":2,\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{\"id\":\"mw-test\"}}\n";

fn send(s: &TcpStream, how: &str, data: &[u8]) {
    let fd = s.as_raw_fd();
    let (a, b) = data.split_at(data.len() / 3);
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut _,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        },
    ];
    // SAFETY: valid fd and buffers that outlive the calls.
    let n = unsafe {
        match how {
            "write" => libc::write(fd, data.as_ptr().cast(), data.len()),
            "sendto" => libc::sendto(fd, data.as_ptr().cast(), data.len(), 0, std::ptr::null(), 0),
            "writev" => libc::writev(fd, iov.as_ptr(), 2),
            "sendmsg" => {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr() as *mut _;
                msg.msg_iovlen = 2;
                libc::sendmsg(fd, &msg, 0)
            }
            other => panic!("unknown syscall {other}"),
        }
    };
    assert_eq!(
        n as usize,
        data.len(),
        "{how} sent {n} of {} bytes",
        data.len()
    );
}

/// Reads the peer's answer (or gives up after a while) so the process lives long enough to
/// be looked at, then exits.
fn linger(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf);
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("missing argument {i}"))
    };
    let addr = |i: usize| arg(i).parse::<SocketAddr>().expect("address");
    match arg(1) {
        "stratum" => {
            let s = TcpStream::connect(addr(2)).expect("connect");
            if std::env::var_os("MW_STAMP").is_some() {
                // For latency benchmarks: CLOCK_MONOTONIC just before the login leaves.
                println!("pid {}\nsent {}", std::process::id(), monotonic_ns());
                std::io::stdout().flush().ok();
            }
            send(&s, arg(3), LOGIN);
            linger(s);
        }
        "socks5" => {
            // A SOCKS5 handshake in front of the login, as a miner behind a proxy sends it.
            let mut s = TcpStream::connect(addr(2)).expect("connect");
            let target = addr(3);
            s.write_all(&[5, 1, 0]).expect("greeting");
            let mut req = vec![5, 1, 0, 1];
            let std::net::IpAddr::V4(ip) = target.ip() else {
                panic!("IPv4 target")
            };
            req.extend_from_slice(&ip.octets());
            req.extend_from_slice(&target.port().to_be_bytes());
            s.write_all(&req).expect("request");
            s.write_all(LOGIN).expect("login");
            linger(s);
        }
        "http" => {
            let mut s = TcpStream::connect(addr(2)).expect("connect");
            s.write_all(
                format!(
                    "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: mw-test\r\n\r\n",
                    arg(2)
                )
                .as_bytes(),
            )
            .expect("request");
            linger(s);
        }
        "connect" => {
            let s = TcpStream::connect(addr(2)).expect("connect");
            linger(s);
        }
        "rename" | "rename-thread" => {
            let name = std::ffi::CString::new(arg(2)).expect("name");
            let set = move || {
                // SAFETY: PR_SET_NAME with a NUL-terminated name; the kernel copies 15 bytes.
                let r = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                assert_eq!(r, 0, "prctl: {}", std::io::Error::last_os_error());
            };
            let wait = if arg(1) == "rename" {
                set();
                3
            } else {
                std::thread::spawn(set).join().expect("thread");
                2
            };
            std::thread::sleep(Duration::from_secs(wait));
        }
        "rename-comm" => {
            let name = arg(2).to_string();
            std::thread::spawn(move || std::fs::write("/proc/self/comm", name))
                .join()
                .expect("thread")
                .expect("write /proc/self/comm");
            std::thread::sleep(Duration::from_secs(3));
        }
        "resolve" => {
            use std::net::ToSocketAddrs;
            let port: u16 = arg(3).parse().expect("port");
            let to = (arg(2), port)
                .to_socket_addrs()
                .expect("resolve")
                .next()
                .expect("an address");
            let s = TcpStream::connect(to).expect("connect");
            linger(s);
        }
        "heartbeat" => {
            let secs = Duration::from_secs(arg(3).parse().expect("seconds"));
            let until = Instant::now() + secs;
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
            let s = TcpStream::connect(addr(2)).expect("connect");
            let mut answers = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut w = &s;
            let mut line = String::new();
            while Instant::now() < until {
                w.write_all(b"checkout feature=solver\n").expect("ask");
                line.clear();
                answers.read_line(&mut line).expect("answer");
                assert!(!line.is_empty(), "the server hung up");
                std::thread::sleep(Duration::from_millis(700));
            }
        }
        "burn" => {
            let until = Instant::now() + Duration::from_secs(arg(2).parse().expect("seconds"));
            let mut x: u64 = 1;
            while Instant::now() < until {
                for _ in 0..100_000 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                }
            }
            std::hint::black_box(x);
        }
        "interval" => {
            let until = Instant::now() + Duration::from_secs(arg(2).parse().expect("seconds"));
            let (mut lo, mut hi) = (0.0f64, 0.0f64);
            while Instant::now() < until {
                for i in 0..10_000 {
                    let x = std::hint::black_box(1.0 / f64::from(i + 3));
                    set_rounding(ROUND_DOWN);
                    lo = std::hint::black_box(lo + x);
                    set_rounding(ROUND_UP);
                    hi = std::hint::black_box(hi + x);
                }
                set_rounding(ROUND_NEAREST);
            }
            assert!(lo <= hi, "lower bound {lo} above upper {hi}");
        }
        "hold" => {
            // Connects now; sends a keepalive when told on stdin; exits at EOF.
            let mut s = TcpStream::connect(addr(2)).expect("connect");
            println!("connected");
            std::io::stdout().flush().ok();
            let mut lines = std::io::stdin().lock().lines();
            if lines.next().is_some() {
                s.write_all(KEEPALIVE).expect("keepalive");
            }
            for _ in lines {}
        }
        "fanout" => {
            // One attempt on PORT at each of N loopback addresses from 127.0.0.2 up, as a worm
            // looking for SSH or Redis does: refused or not, then on to the next.
            let port: u16 = arg(2).parse().expect("port");
            let n: u32 = arg(3).parse().expect("count");
            for i in 0..n {
                let ip = std::net::Ipv4Addr::from(0x7f00_0002 + i);
                let _ = TcpStream::connect_timeout(
                    &SocketAddr::from((ip, port)),
                    Duration::from_millis(200),
                );
            }
            // Lives on a moment, so the sensor can still read it from /proc.
            std::thread::sleep(Duration::from_millis(500));
        }
        "bytewise" => {
            // One byte per packet: TCP_NODELAY and a pause, so autocorking cannot merge them.
            let s = TcpStream::connect(addr(2)).expect("connect");
            s.set_nodelay(true).expect("TCP_NODELAY");
            for b in LOGIN {
                (&s).write_all(std::slice::from_ref(b)).expect("write");
                std::thread::sleep(Duration::from_micros(300));
            }
            linger(s);
        }
        "padded" => {
            let s = TcpStream::connect(addr(2)).expect("connect");
            s.set_nodelay(true).expect("TCP_NODELAY");
            let size = if arg(3) == "big" { 24 * 1024 } else { 2048 };
            let blank: Vec<u8> = b" \t\r\n".iter().copied().cycle().take(size).collect();
            if arg(3) == "split" {
                for part in blank.chunks(512) {
                    (&s).write_all(part).expect("write");
                    std::thread::sleep(Duration::from_millis(20));
                }
                (&s).write_all(LOGIN).expect("write");
            } else {
                (&s).write_all(&[&blank[..], LOGIN].concat())
                    .expect("write");
            }
            linger(s);
        }
        "leader-exit" => {
            let target = addr(2);
            std::thread::spawn(move || {
                // Give the leader time to be gone first.
                std::thread::sleep(Duration::from_millis(300));
                let mut s = TcpStream::connect(target).expect("connect");
                s.write_all(LOGIN).expect("login");
                linger(s);
                std::process::exit(0);
            });
            // What pthread_exit does in the kernel, without the forced unwind Rust's frames
            // cannot take: SYS_exit ends this thread only, and the leader stays a zombie
            // while the other thread goes on.
            // SAFETY: ends this thread; nothing of it is used after.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("SYS_exit returned");
        }
        "connect-storm" => {
            // N connections that each send a few bytes and close.
            let n: u32 = arg(3).parse().expect("count");
            for _ in 0..n {
                if let Ok(mut s) = TcpStream::connect(addr(2)) {
                    let _ = s.write_all(b"ping\n");
                }
            }
        }
        "payload-storm" => {
            // N connections that each send 2 KiB that is not Stratum, as fast as they go.
            let n: u32 = arg(3).parse().expect("count");
            let junk = [b'x'; 2048];
            for _ in 0..n {
                if let Ok(mut s) = TcpStream::connect(addr(2)) {
                    let _ = s.write_all(&junk);
                }
            }
        }
        "udp" => {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            u.send_to(b"unconnected", addr(2)).expect("sendto");
            let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            c.connect(addr(3)).expect("connect");
            c.send(b"connected").expect("send");
            std::thread::sleep(Duration::from_millis(500));
        }
        "thread-exec" => {
            let argv: Vec<std::ffi::CString> = args[2..]
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()).expect("argument"))
                .collect();
            let t = std::thread::spawn(move || {
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                // SAFETY: NUL-terminated strings and array that outlive the call.
                unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
                panic!("execv failed: {}", std::io::Error::last_os_error());
            });
            let _ = t.join();
        }
        "memfd-exec" => {
            let image = std::fs::read(arg(2)).expect("read program");
            // SAFETY: plain syscalls with valid arguments.
            unsafe {
                let fd = libc::memfd_create(c"mw-fileless".as_ptr(), 0);
                assert!(fd >= 0, "memfd_create");
                let mut f = std::fs::File::from_raw_fd(fd);
                f.write_all(&image).expect("write memfd");
                std::mem::forget(f);
                let argv: Vec<std::ffi::CString> = args[2..]
                    .iter()
                    .map(|a| std::ffi::CString::new(a.as_str()).expect("argument"))
                    .collect();
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                let envp = [std::ptr::null::<libc::c_char>()];
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c"".as_ptr(),
                    ptrs.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                panic!("execveat failed: {}", std::io::Error::last_os_error());
            }
        }
        other => panic!("unknown command {other}"),
    }
}

/// MXCSR rounding-control values (bits 13-14), with every exception masked.
const ROUND_NEAREST: u32 = 0x1f80;
const ROUND_DOWN: u32 = 0x1f80 | (1 << 13);
const ROUND_UP: u32 = 0x1f80 | (2 << 13);

/// Sets the SSE rounding mode, as `fesetround` does.
fn set_rounding(mxcsr: u32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: loads a valid MXCSR value (all exceptions masked, only the rounding bits set);
    // nothing else depends on the rounding mode across this call.
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = mxcsr;
}
