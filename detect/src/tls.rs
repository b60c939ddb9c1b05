//! The server name a TLS client asks for (SNI), read from the first bytes it sends: the
//! ClientHello travels in clear even when everything after it is encrypted, so a miner's
//! `"tls": true` still names its pool. Bytes are hostile: every length is checked against
//! what is held, and a capture cut short simply yields nothing.

/// `buf` starts like a TLS connection: a handshake record (22) of TLS 1.0 to 1.3 (3.1 to 3.4).
pub fn starts_tls(buf: &[u8]) -> bool {
    matches!(buf, [22, 3, 1..=4, ..])
}

/// The host name in a ClientHello's `server_name` extension, lower case, if `buf` starts with
/// a TLS handshake record carrying a ClientHello and the extension lies within `buf`.
/// Addresses (which clients must not send as SNI, but some do) and names that are not host
/// names give `None`.
pub fn client_hello_sni(buf: &[u8]) -> Option<String> {
    let mut r = Reader(buf);
    // Record header: handshake (22), a 3.x version, its length.
    if r.u8()? != 22 || r.u8()? != 3 {
        return None;
    }
    r.skip(1)?;
    let record = r.u16()? as usize;
    // The record may be cut short by the capture; parse what is held.
    let mut r = Reader(&r.0[..record.min(r.0.len())]);
    // Handshake header: ClientHello (1), 24-bit length.
    if r.u8()? != 1 {
        return None;
    }
    r.skip(3)?;
    r.skip(2 + 32)?; // legacy version, random
    let session = r.u8()? as usize;
    r.skip(session)?;
    let suites = r.u16()? as usize;
    r.skip(suites)?;
    let compression = r.u8()? as usize;
    r.skip(compression)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(&r.0[..ext_len.min(r.0.len())]);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()? as usize;
        let body = exts.take(len)?;
        if kind == 0 {
            return server_name(body);
        }
    }
    None
}

/// The `host_name` entry of a `server_name` extension body.
fn server_name(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    let list = r.u16()? as usize;
    let mut list = Reader(r.take(list)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let len = list.u16()? as usize;
        let name = list.take(len)?;
        if kind != 0 {
            continue;
        }
        let name = std::str::from_utf8(name).ok()?;
        if name.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        return crate::intel::domain(name).ok();
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_starts_tls_and_json_does_not() {
        assert!(starts_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(starts_tls(&hello(b"pool.example", &[])));
        assert!(!starts_tls(b"{\"id\":1}"));
        assert!(!starts_tls(&[0x16, 0x03]));
        assert!(!starts_tls(&[0x16, 0x03, 0x05]));
    }

    /// A ClientHello as a client builds it: `extensions` before and after the SNI.
    fn hello(name: &[u8], before: &[(u16, &[u8])]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (kind, body) in before {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
            exts.extend_from_slice(body);
        }
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sni);
        // supported_versions after it, as OpenSSL orders them.
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);

        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);

        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_name_wherever_the_extension_sits() {
        let h = hello(
            b"Pool.Example.ORG",
            &[(0x0017, &[]), (0x000a, &[0, 2, 0, 29])],
        );
        assert_eq!(client_hello_sni(&h).as_deref(), Some("pool.example.org"));
        let h = hello(b"xmr.pool.test", &[]);
        assert_eq!(client_hello_sni(&h).as_deref(), Some("xmr.pool.test"));
    }

    #[test]
    fn truncated_or_hostile_bytes_give_nothing() {
        let h = hello(b"pool.example.org", &[(0x0015, &[0; 300])]);
        // Cut anywhere before the name ends: nothing, and no panic.
        let name_end = h.len() - 7;
        for cut in 0..name_end {
            assert_eq!(client_hello_sni(&h[..cut]), None, "cut at {cut}");
        }
        assert!(client_hello_sni(&h[..name_end]).is_some());
        // Lengths that lie.
        let mut bad = h.clone();
        let at = bad.len() - 7 - b"pool.example.org".len() - 2;
        bad[at] = 0xff;
        assert_eq!(client_hello_sni(&bad), None);
        // Not a handshake, not a ClientHello, an address, a name with bad bytes.
        assert_eq!(client_hello_sni(b"{\"id\":1,\"method\":\"login\"}"), None);
        let mut server = hello(b"pool.example.org", &[]);
        server[5] = 2;
        assert_eq!(client_hello_sni(&server), None);
        assert_eq!(client_hello_sni(&hello(b"192.0.2.7", &[])), None);
        assert_eq!(client_hello_sni(&hello(b"pool\0.example.org", &[])), None);
        assert_eq!(client_hello_sni(&hello(b"localhost", &[])), None);
    }

    #[test]
    fn every_prefix_and_every_flipped_byte_is_safe() {
        let h = hello(b"pool.example.org", &[(0x0023, &[1, 2, 3])]);
        for i in 0..h.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = h.clone();
                m[i] = v;
                let _ = client_hello_sni(&m);
            }
        }
    }
}
