//! Decoding of ring-buffer records into owned, typed events: once, here, with length and
//! kind checks. Nothing past this module sees raw kernel bytes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use minerwatch_common::{
    CONNECT_UNCONNECTED_SEND, CloseEvent, ConnectEvent, EXEC_ARGV_MISSING, EXEC_ARGV_TRUNCATED,
    EXEC_FIXED, EventHeader, ExecEvent, ExitEvent, FlowEvent, ForkEvent, KillEvent,
    PAYLOAD_AFTER_BLANK, PAYLOAD_CAP, PAYLOAD_DNS_ANSWER, PAYLOAD_DNS_TCP, PAYLOAD_GAP,
    PAYLOAD_LAST, PROTO_TCP, PROTO_UDP, PayloadEvent, RenameEvent, SysctlEvent, kind,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte layout")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("connect record with unknown protocol {proto}")]
    UnknownProto { proto: u8 },
}

/// Fields common to all events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub meta: Meta,
    /// The thread that called exec (not the leader when another thread did).
    pub old_tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The process's start (`start_boottime`, ns), 0 when unknown.
    pub start_ns: u64,
    /// The executable's (device, inode), as `stat` shows them; (0, 0) when unknown.
    pub exe_id: (u64, u64),
    /// The v1 cgroups, as one key (`minerwatch_common::cgroup_v1_key`); 0 on cgroup v2 nodes.
    pub cgroup_v1: u64,
    pub comm: String,
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub argv_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub meta: Meta,
    pub child: u32,
    /// The child's start (`start_boottime`, ns), 0 when unknown.
    pub child_start_ns: u64,
    pub comm: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// An outbound connection: a TCP connect once its handshake ended, a connected UDP socket,
/// or a new destination of an unconnected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub meta: Meta,
    pub cookie: u64,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// 0, or the negative errno a TCP connect failed with.
    pub ret: i32,
    /// A datagram sent without connecting (`sendto` on an unconnected UDP socket).
    pub unconnected: bool,
    /// Open before the sensor started: found in /proc, not reported by a hook (so the
    /// in-kernel pool match never saw it).
    pub preexisting: bool,
}

impl Connect {
    /// The connection was made.
    pub fn ok(&self) -> bool {
        self.ret == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Payload of one packet on a watched TCP connection. `meta.tgid` is the process that
/// connected the socket.
pub struct Payload {
    pub meta: Meta,
    pub cookie: u64,
    pub peer: SocketAddr,
    /// Payload bytes of this connection before this packet.
    pub offset: u32,
    /// Payload bytes in the packet (`data` holds at most the capture limit of them).
    pub total: u32,
    pub data: Vec<u8>,
    /// Records of this connection were lost before this one: bytes before `offset` unknown.
    pub gap: bool,
    /// The kernel stopped capturing after this record (budget spent).
    pub last: bool,
    /// Every byte before `offset` was whitespace, skipped by the kernel: not a loss.
    pub after_blank: bool,
}

/// A followed TCP connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub meta: Meta,
    pub cookie: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Exec(Exec),
    Fork(Fork),
    Exit(Meta),
    Connect(Connect),
    /// A connect to an address on a pool list, matched in the kernel.
    PoolHit(PoolHit),
    Payload(Payload),
    Close(Close),
    /// A write of a `vm/nr_*` sysctl.
    Sysctl(Sysctl),
    /// A DNS message on one of the process's UDP sockets to port 53.
    Dns(Dns),
    /// A watched file changed (from fanotify, not a ring: see `crate::files`).
    File(FileEvent),
    /// A process's main thread changed its name (exec's own renaming included).
    Rename(Rename),
    /// The process sent SIGKILL or SIGTERM to another.
    Kill(Kill),
    /// How one of its long-lived, quiet TCP connections talks.
    Flow(FlowReport),
}

/// The totals of a followed TCP connection's payload so far (see `minerwatch_common::Flow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowReport {
    pub meta: Meta,
    pub cookie: u64,
    pub peer: SocketAddr,
    /// Since connect.
    pub age_ns: u64,
    pub flow: minerwatch_common::Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub meta: Meta,
    pub target: u32,
    pub sig: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    pub meta: Meta,
    pub old: String,
    pub new: String,
}

/// A change to a file the persistence watch marks, by process `meta.tgid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    pub meta: Meta,
    pub change: crate::files::FileChange,
}

/// A DNS message a process sent (a query) or received (an answer) on a UDP socket it talks
/// to port 53 with. The bytes are the message as it travelled, unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub meta: Meta,
    /// The name server: where the query went, where the answer came from.
    pub server: SocketAddr,
    pub answer: bool,
    pub data: Vec<u8>,
    /// The message was longer than what was captured.
    pub cut: bool,
}

/// A process wrote a sysctl (only `vm/nr_*` ones are reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub meta: Meta,
    /// As /proc/sys spells it: `vm/nr_hugepages`.
    pub name: String,
    /// The value written, trimmed; empty when the kernel could not say.
    pub value: String,
}

/// A connect whose destination is on a pool list: the connect, and the id of the list entry
/// that matched (see `intel::PoolLists`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolHit {
    pub connect: Connect,
    pub entry: u32,
}

impl Event {
    /// Who and when: the process the event is about, and the kernel's timestamp.
    pub fn meta(&self) -> &Meta {
        match self {
            Event::Exec(e) => &e.meta,
            Event::Fork(f) => &f.meta,
            Event::Exit(m) => m,
            Event::Connect(c) => &c.meta,
            Event::PoolHit(h) => &h.connect.meta,
            Event::Payload(p) => &p.meta,
            Event::Close(c) => &c.meta,
            Event::Sysctl(s) => &s.meta,
            Event::Dns(d) => &d.meta,
            Event::File(f) => &f.meta,
            Event::Rename(r) => &r.meta,
            Event::Kill(k) => &k.meta,
            Event::Flow(f) => &f.meta,
        }
    }
}

/// Copies a `#[repr(C)]` plain-data struct out of a byte slice of at least its size.
fn read<T: Copy>(b: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if b.len() < need {
        return Err(DecodeError::Short { len: b.len(), need });
    }
    // SAFETY: length checked; T is one of minerwatch_common's plain-data structs, valid for any
    // bit pattern; read_unaligned because ring-buffer records are only 8-byte aligned.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Copies a record whose tail is cut to what it uses (exec argv, payload data): at least
/// `fixed` bytes, the rest of `T` zero.
fn read_cut<T: Copy>(b: &[u8], fixed: usize) -> Result<T, DecodeError> {
    if b.len() < fixed {
        return Err(DecodeError::Short {
            len: b.len(),
            need: fixed,
        });
    }
    let n = b.len().min(size_of::<T>());
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `n` bytes fit in both; T is plain data, valid for any bit pattern (zero too).
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), out.as_mut_ptr().cast::<u8>(), n);
        Ok(out.assume_init())
    }
}

/// A device number in the kernel's encoding (`major << 20 | minor`) as `stat` reports it.
fn user_dev(kdev: u32) -> u64 {
    if kdev == 0 {
        return 0;
    }
    libc::makedev(kdev >> 20, kdev & 0xf_ffff)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An address as the kernel gave it: 4 bytes for AF_INET, 16 for AF_INET6 (IPv4-mapped
/// addresses shown as IPv4).
fn ip_of(family: u16, a: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET6 as u16 {
        let v6 = Ipv6Addr::from(*a);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

fn meta(h: &EventHeader) -> Meta {
    Meta {
        tgid: h.tgid,
        tid: h.tid,
        ktime_ns: h.ktime_ns,
        cgroup_id: h.cgroup_id,
    }
}

impl TryFrom<&[u8]> for Event {
    type Error = DecodeError;

    fn try_from(b: &[u8]) -> Result<Self, DecodeError> {
        let hdr: EventHeader = read(b)?;
        Ok(match hdr.kind {
            kind::EXEC => {
                let e: ExecEvent = read_cut(b, EXEC_FIXED)?;
                let len = (e.argv_len as usize)
                    .min(e.argv.len())
                    .min(b.len() - EXEC_FIXED);
                let mut area = &e.argv[..len];
                // The argument area ends with its last argument's NUL.
                if let Some(rest) = area.strip_suffix(&[0]) {
                    area = rest;
                }
                let argv = if area.is_empty() {
                    Vec::new()
                } else {
                    area.split(|&c| c == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                };
                Event::Exec(Exec {
                    meta: meta(&e.hdr),
                    old_tid: e.old_tid,
                    ppid: e.ppid,
                    uid: e.uid,
                    gid: e.gid,
                    start_ns: e.start_ns,
                    exe_id: (user_dev(e.exe_dev), e.exe_ino),
                    cgroup_v1: e.cgroup_v1,
                    comm: cstr(&e.comm),
                    filename: cstr(&e.filename),
                    argv,
                    argv_truncated: e.flags & EXEC_ARGV_TRUNCATED != 0,
                    argv_missing: e.flags & EXEC_ARGV_MISSING != 0,
                })
            }
            kind::FORK => {
                let e: ForkEvent = read(b)?;
                Event::Fork(Fork {
                    meta: meta(&e.hdr),
                    child: e.child_tgid,
                    child_start_ns: e.child_start_ns,
                    comm: cstr(&e.comm),
                })
            }
            kind::EXIT => Event::Exit(meta(&read::<ExitEvent>(b)?.hdr)),
            kind::CONNECT | kind::POOL_CONNECT => {
                let e: ConnectEvent = read(b)?;
                let transport = match e.proto {
                    PROTO_TCP => Transport::Tcp,
                    PROTO_UDP => Transport::Udp,
                    proto => return Err(DecodeError::UnknownProto { proto }),
                };
                let pool = hdr.kind == kind::POOL_CONNECT;
                let connect = Connect {
                    meta: meta(&e.hdr),
                    cookie: e.cookie,
                    peer: SocketAddr::new(ip_of(e.family, &e.daddr), e.dport),
                    transport,
                    ret: if pool {
                        0
                    } else {
                        -(e.error.min(i32::MAX as u32) as i32)
                    },
                    unconnected: e.flags & CONNECT_UNCONNECTED_SEND != 0,
                    preexisting: false,
                };
                if pool {
                    Event::PoolHit(PoolHit {
                        connect,
                        entry: e.error,
                    })
                } else {
                    Event::Connect(connect)
                }
            }
            kind::PAYLOAD => {
                let fixed = size_of::<PayloadEvent>() - PAYLOAD_CAP;
                let e: PayloadEvent = read_cut(b, fixed)?;
                let len = (e.len as usize).min(e.data.len()).min(b.len() - fixed);
                Event::Payload(Payload {
                    meta: meta(&e.hdr),
                    cookie: e.cookie,
                    peer: SocketAddr::new(ip_of(e.family, &e.daddr), e.dport),
                    offset: e.offset,
                    total: e.total,
                    data: e.data[..len].to_vec(),
                    gap: e.flags & PAYLOAD_GAP != 0,
                    last: e.flags & PAYLOAD_LAST != 0,
                    after_blank: e.flags & PAYLOAD_AFTER_BLANK != 0,
                })
            }
            kind::DNS => {
                let fixed = size_of::<PayloadEvent>() - PAYLOAD_CAP;
                let e: PayloadEvent = read_cut(b, fixed)?;
                let len = (e.len as usize).min(e.data.len()).min(b.len() - fixed);
                // Over TCP the message follows its two-byte length.
                let start = if e.flags & PAYLOAD_DNS_TCP != 0 {
                    2.min(len)
                } else {
                    0
                };
                Event::Dns(Dns {
                    meta: meta(&e.hdr),
                    server: SocketAddr::new(ip_of(e.family, &e.daddr), e.dport),
                    answer: e.flags & PAYLOAD_DNS_ANSWER != 0,
                    data: e.data[start..len].to_vec(),
                    cut: e.total as usize > len,
                })
            }
            kind::FLOW => {
                let e: FlowEvent = read(b)?;
                Event::Flow(FlowReport {
                    meta: meta(&e.hdr),
                    cookie: e.cookie,
                    peer: SocketAddr::new(ip_of(e.family, &e.daddr), e.dport),
                    age_ns: e.hdr.ktime_ns.saturating_sub(e.flow.opened_ns),
                    flow: e.flow,
                })
            }
            kind::KILL => {
                let e: KillEvent = read(b)?;
                Event::Kill(Kill {
                    meta: meta(&e.hdr),
                    target: e.target_tgid,
                    sig: e.sig,
                })
            }
            kind::RENAME => {
                let e: RenameEvent = read(b)?;
                Event::Rename(Rename {
                    meta: meta(&e.hdr),
                    old: cstr(&e.old),
                    new: cstr(&e.new),
                })
            }
            kind::CLOSE => {
                let e: CloseEvent = read(b)?;
                Event::Close(Close {
                    meta: meta(&e.hdr),
                    cookie: e.cookie,
                })
            }
            kind::SYSCTL => {
                let e: SysctlEvent = read(b)?;
                let len = usize::try_from(e.value_len).unwrap_or(0).min(e.value.len());
                Event::Sysctl(Sysctl {
                    meta: meta(&e.hdr),
                    name: cstr(&e.name),
                    value: String::from_utf8_lossy(&e.value[..len]).trim().to_string(),
                })
            }
            kind => return Err(DecodeError::UnknownKind { kind }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn hdr(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            tgid: 42,
            tid: 43,
            _pad: 0,
            ktime_ns: 7,
            cgroup_id: 9,
        }
    }

    #[test]
    fn decodes_a_sysctl_write() {
        let mut e = SysctlEvent {
            hdr: hdr(kind::SYSCTL),
            name: [0; minerwatch_common::SYSCTL_NAME_CAP],
            value: [0; minerwatch_common::SYSCTL_VALUE_CAP],
            value_len: 5,
            _pad: 0,
        };
        e.name[..15].copy_from_slice(b"vm/nr_hugepages");
        e.value[..5].copy_from_slice(b"1280\n");
        let Ok(Event::Sysctl(s)) = Event::try_from(bytes(&e).as_slice()) else {
            panic!("not a sysctl event");
        };
        assert_eq!(
            (s.name.as_str(), s.value.as_str()),
            ("vm/nr_hugepages", "1280")
        );
        // A negative length (the helper's errno) is no value, not a panic.
        e.value_len = -7;
        let Ok(Event::Sysctl(s)) = Event::try_from(bytes(&e).as_slice()) else {
            panic!("not a sysctl event");
        };
        assert!(s.value.is_empty());
    }

    #[test]
    fn decodes_connect_v4_and_mapped_v6() {
        let mut e = ConnectEvent {
            hdr: hdr(kind::CONNECT),
            cookie: 77,
            error: 0,
            family: libc::AF_INET as u16,
            proto: PROTO_TCP,
            flags: 0,
            dport: 3333,
            _pad: [0; 6],
            daddr: [0; 16],
        };
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let Event::Connect(c) = Event::try_from(&bytes(&e)[..]).unwrap() else {
            panic!()
        };
        assert_eq!(c.peer, "127.0.0.1:3333".parse().unwrap());
        assert!(c.ok() && c.transport == Transport::Tcp && c.meta.tgid == 42 && c.cookie == 77);

        e.error = libc::ECONNREFUSED as u32;
        e.proto = PROTO_UDP;
        e.flags = CONNECT_UNCONNECTED_SEND;
        let Event::Connect(c) = Event::try_from(&bytes(&e)[..]).unwrap() else {
            panic!()
        };
        assert!(!c.ok() && c.ret == -libc::ECONNREFUSED);
        assert!(c.transport == Transport::Udp && c.unconnected);
        e.proto = 99;
        assert_eq!(
            Event::try_from(&bytes(&e)[..]),
            Err(DecodeError::UnknownProto { proto: 99 })
        );
        e.proto = PROTO_TCP;
        e.flags = 0;
        e.error = 0;

        e.family = libc::AF_INET6 as u16;
        e.daddr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let Event::Connect(c) = Event::try_from(&bytes(&e)[..]).unwrap() else {
            panic!()
        };
        assert_eq!(c.peer, "10.1.2.3:3333".parse().unwrap());
    }

    #[test]
    fn decodes_exec_argv() {
        // SAFETY: all-zero is a valid ExecEvent.
        let mut e: ExecEvent = unsafe { std::mem::zeroed() };
        e.hdr = hdr(kind::EXEC);
        let args = b"xmrig\0-o\0pool:3333\0";
        e.argv[..args.len()].copy_from_slice(args);
        e.argv_len = args.len() as u32;
        e.filename[..10].copy_from_slice(b"/tmp/xmrig");
        e.exe_dev = (8 << 20) | 0x1_0002; // sdq2: minor past 255
        e.exe_ino = 4242;
        // The record is cut after the argv bytes used.
        let rec = bytes(&e)[..EXEC_FIXED + args.len()].to_vec();
        let Event::Exec(x) = Event::try_from(&rec[..]).unwrap() else {
            panic!()
        };
        assert_eq!(x.argv, ["xmrig", "-o", "pool:3333"]);
        assert_eq!(x.filename, "/tmp/xmrig");
        assert_eq!(x.exe_id, (libc::makedev(8, 0x1_0002), 4242));
        // An argv_len past the record's end is cut to it, never read beyond.
        e.argv_len = 2000;
        let rec = bytes(&e)[..EXEC_FIXED + args.len()].to_vec();
        let Event::Exec(x) = Event::try_from(&rec[..]).unwrap() else {
            panic!()
        };
        assert_eq!(x.argv, ["xmrig", "-o", "pool:3333"]);
        assert!(matches!(
            Event::try_from(&rec[..EXEC_FIXED - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_cut_payload_records() {
        // SAFETY: all-zero is a valid PayloadEvent.
        let mut e: PayloadEvent = unsafe { std::mem::zeroed() };
        e.hdr = hdr(kind::PAYLOAD);
        e.family = libc::AF_INET6 as u16;
        e.daddr = Ipv6Addr::LOCALHOST.octets();
        e.dport = 3333;
        e.data[0] = b'{';
        e.len = 1;
        e.total = 1;
        e.offset = 40;
        e.flags = PAYLOAD_GAP | PAYLOAD_LAST;
        let fixed = size_of::<PayloadEvent>() - PAYLOAD_CAP;
        let rec = bytes(&e)[..fixed + 1].to_vec();
        let Event::Payload(p) = Event::try_from(&rec[..]).unwrap() else {
            panic!()
        };
        assert_eq!(p.data, b"{");
        assert_eq!(p.peer, "[::1]:3333".parse().unwrap());
        assert!(p.gap && p.last && p.offset == 40);
    }

    #[test]
    fn decodes_dns_answers_cut_to_their_capture() {
        // SAFETY: all-zero is a valid PayloadEvent.
        let mut e: PayloadEvent = unsafe { std::mem::zeroed() };
        e.hdr = hdr(kind::DNS);
        e.family = libc::AF_INET as u16;
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 53]);
        e.dport = 53;
        e.data[..3].copy_from_slice(&[0x12, 0x34, 0x81]);
        e.len = 3;
        e.total = 700;
        e.flags = PAYLOAD_DNS_ANSWER;
        let fixed = size_of::<PayloadEvent>() - PAYLOAD_CAP;
        let rec = bytes(&e)[..fixed + 3].to_vec();
        let Event::Dns(d) = Event::try_from(&rec[..]).unwrap() else {
            panic!()
        };
        assert_eq!(d.data, [0x12, 0x34, 0x81]);
        assert_eq!(d.server, "127.0.0.53:53".parse().unwrap());
        assert!(d.answer && d.cut);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(
            Event::try_from(&[0u8; 5][..]),
            Err(DecodeError::Short { .. })
        ));
        let mut b = bytes(&hdr(kind::EXEC));
        assert!(matches!(
            Event::try_from(&b[..]),
            Err(DecodeError::Short { .. })
        ));
        b[0] = 99;
        assert_eq!(
            Event::try_from(&b[..]),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
    }
}
