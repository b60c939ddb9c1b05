//! DNS messages as a process's sockets carried them: the names it asked for and the
//! addresses the answers gave. Bytes are hostile: every length is checked, compression
//! pointers must point backwards and are followed a bounded number of times, and a message
//! cut short by the capture yields what was whole.
use std::net::IpAddr;

/// What one message says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    /// The names asked for, lower case, without the trailing dot.
    pub questions: Vec<String>,
    /// The addresses in the answer section (A and AAAA records), whatever name they are for:
    /// a CNAME chain ends at another name, and the process asked for the question's.
    pub addrs: Vec<IpAddr>,
}

/// Most questions and answer records read from one message.
const MAX_QUESTIONS: usize = 4;
const MAX_ANSWERS: usize = 64;
/// Most compression pointers followed in one name.
const MAX_JUMPS: usize = 16;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Parses `buf` (a DNS message, without TCP's length prefix); `None` when not even the
/// header and the first question are whole.
pub fn parse(buf: &[u8]) -> Option<Message> {
    if buf.len() < 12 {
        return None;
    }
    let be = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
    let flags = be(2);
    // Opcode other than a standard query: not what resolvers send.
    if (flags >> 11) & 0xf != 0 {
        return None;
    }
    let qd = be(4) as usize;
    let an = be(6) as usize;
    let mut msg = Message {
        id: be(0),
        response: flags & 0x8000 != 0,
        ..Message::default()
    };
    let mut at = 12;
    for _ in 0..qd.min(MAX_QUESTIONS) {
        let (name, next) = name(buf, at)?;
        at = next.checked_add(4).filter(|&e| e <= buf.len())?;
        msg.questions.push(name);
    }
    if msg.questions.is_empty() || qd > MAX_QUESTIONS {
        return (!msg.questions.is_empty()).then_some(msg);
    }
    for _ in 0..an.min(MAX_ANSWERS) {
        let Some((_, next)) = name(buf, at) else {
            break;
        };
        let Some(fixed) = buf.get(next..next + 10) else {
            break;
        };
        let ty = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some(data) = buf.get(next + 10..next + 10 + len) else {
            break;
        };
        at = next + 10 + len;
        match (ty, class, data.len()) {
            (TYPE_A, CLASS_IN, 4) => {
                msg.addrs
                    .push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?));
            }
            (TYPE_AAAA, CLASS_IN, 16) => {
                msg.addrs
                    .push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?));
            }
            _ => {}
        }
    }
    Some(msg)
}

/// The name at `at` and where the bytes after it start.
fn name(buf: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *buf.get(at)? as usize;
        match len {
            0 => {
                let next = end.unwrap_or(at + 1);
                return (out.len() <= 253).then_some((out, next));
            }
            0xc0.. => {
                let ptr = (len & 0x3f) << 8 | *buf.get(at + 1)? as usize;
                // Only backwards, and only so often: no loops.
                if ptr >= at || jumps == MAX_JUMPS {
                    return None;
                }
                jumps += 1;
                end.get_or_insert(at + 2);
                at = ptr;
            }
            64.. => return None, // the reserved label types
            _ => {
                let label = buf.get(at + 1..at + 1 + len)?;
                if !out.is_empty() {
                    out.push('.');
                }
                for &c in label {
                    // Printable ASCII as it is; anything else escaped, so it cannot pass for
                    // another name or break a log line.
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        out.push(c.to_ascii_lowercase() as char);
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                if out.len() > 253 {
                    return None;
                }
                at += 1 + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(labels(name));
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    /// An answer with a CNAME then an A record, both names compressed against the question.
    fn answer(name: &str, addr: [u8; 4]) -> Vec<u8> {
        let mut m = query(name);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2;
        // CNAME: name -> "edge." + name
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&[0, 7, 4]);
        m.extend_from_slice(b"edge");
        m.extend_from_slice(&[0xc0, 12]);
        let cname_at = m.len() - 7;
        m.extend_from_slice(&[0xc0, cname_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&addr);
        m
    }

    #[test]
    fn reads_questions_and_addresses() {
        let q = parse(&query("Pool.Example.ORG")).unwrap();
        assert!(!q.response);
        assert_eq!(q.questions, ["pool.example.org"]);
        let a = parse(&answer("pool.example.org", [10, 2, 3, 4])).unwrap();
        assert!(a.response);
        assert_eq!(a.questions, ["pool.example.org"]);
        assert_eq!(a.addrs, [IpAddr::from([10, 2, 3, 4])]);
    }

    #[test]
    fn hostile_messages_give_nothing_or_what_was_whole() {
        let a = answer("pool.example.org", [10, 2, 3, 4]);
        for cut in 0..a.len() {
            let got = parse(&a[..cut]);
            if let Some(m) = got {
                assert_eq!(m.questions, ["pool.example.org"], "cut at {cut}");
            }
        }
        // A pointer to itself, and one pointing forwards.
        let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(parse(&m), None);
        m[13] = 14;
        assert_eq!(parse(&m), None);
        // Bytes that are not a name are escaped, not passed through.
        let q = parse(&query("po\nol.example.org")).unwrap();
        assert_eq!(q.questions, ["po\\010ol.example.org"]);
        // Every byte flipped: no panic.
        for i in 0..a.len() {
            for v in [0u8, 0x3f, 0xc0, 0xff] {
                let mut m = a.clone();
                m[i] = v;
                let _ = parse(&m);
            }
        }
    }
}
