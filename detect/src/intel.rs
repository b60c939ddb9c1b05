//! Pool intelligence: lists of pool domains, addresses and networks, from the bundled list
//! and the operator's feeds. Parsing is strict: a feed with a line that is neither a domain,
//! an address nor a network is refused as a whole, with the line named, so a typo never
//! silently empties a list.
//!
//! A feed is text, one entry per line: a domain (`pool.example.org`, which also covers its
//! subdomains; a leading `*.` is allowed), an address (`192.0.2.7`, `2001:db8::7`), a network
//! (`192.0.2.0/24`), or an address with a port (`192.0.2.7:3333`, `[2001:db8::7]:443`; the
//! port is ignored). After the entry, fields separated by a comma, a semicolon, a tab or a
//! space are ignored, so committee-style lists of `address,port,first seen,...` load as they
//! are, header line included. `#` starts a comment.
use std::net::IpAddr;

use hashbrown::HashMap;

/// One entry of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Lower case, without a trailing dot.
    Domain(String),
    Net {
        addr: IpAddr,
        prefix: u8,
    },
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Domain(d) => f.write_str(d),
            Entry::Net { addr, prefix } if *prefix == full(addr) => write!(f, "{addr}"),
            Entry::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

fn full(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Why a feed was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedError {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {} (`{}`)", self.line, self.why, self.text)
    }
}

/// Parses one feed.
pub fn parse(text: &str) -> Result<Vec<Entry>, FeedError> {
    let mut out = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let field = line
            .split([',', ';', '\t', ' '])
            .next()
            .unwrap_or("")
            .trim_matches('"');
        let was_first = std::mem::replace(&mut first, false);
        match entry(field) {
            Ok(e) => out.push(e),
            // A header row of a table (`ip,port,first_seen`).
            Err(_) if was_first && is_header(line) => {}
            Err(why) => {
                return Err(FeedError {
                    line: i + 1,
                    text: raw.chars().take(80).collect(),
                    why,
                });
            }
        }
    }
    Ok(out)
}

/// A row of two or more words: the header of a table.
fn is_header(line: &str) -> bool {
    let fields: Vec<&str> = line
        .split([',', ';', '\t', ' '])
        .filter(|f| !f.is_empty())
        .collect();
    fields.len() >= 2
        && fields.iter().all(|f| {
            f.trim_matches('"')
                .bytes()
                .all(|c| c.is_ascii_alphabetic() || c == b'_' || c == b'-')
        })
}

fn entry(field: &str) -> Result<Entry, &'static str> {
    if field.is_empty() {
        return Err("empty entry");
    }
    if let Some((a, p)) = field.split_once('/') {
        let addr: IpAddr = a.parse().map_err(|_| "not an address before the `/`")?;
        let prefix: u8 = p.parse().map_err(|_| "not a prefix length after the `/`")?;
        if prefix > full(&addr) {
            return Err("prefix length too long for the address");
        }
        return Ok(Entry::Net {
            addr: masked(addr, prefix),
            prefix,
        });
    }
    if let Ok(addr) = field.parse::<IpAddr>() {
        return Ok(Entry::Net {
            prefix: full(&addr),
            addr,
        });
    }
    if let Ok(sa) = field.parse::<std::net::SocketAddr>() {
        return Ok(Entry::Net {
            addr: sa.ip(),
            prefix: full(&sa.ip()),
        });
    }
    let host = match field.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => field,
    };
    domain(host).map(Entry::Domain)
}

/// A domain name as listed, or why it is not one.
pub(crate) fn domain(s: &str) -> Result<String, &'static str> {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if s.len() > 253 {
        return Err("domain name longer than 253 bytes");
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err("not a domain, address or network");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("domain name with an empty or over-long label");
        }
        if !l
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err("not a domain, address or network");
        }
    }
    if labels
        .last()
        .is_some_and(|t| t.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err("not a domain, address or network");
    }
    Ok(s)
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Every list in force: entries by id, and names for lookup. Addresses are matched in the
/// kernel ([`Lists::nets`] is what it is given); names here.
#[derive(Debug, Default, Clone)]
pub struct Lists {
    /// Entry id = index; with the index of its source.
    entries: Vec<(Entry, usize)>,
    sources: Vec<String>,
    domains: HashMap<String, u32>,
}

impl Lists {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the entries of one feed, named `source` in evidence.
    pub fn add(&mut self, source: &str, text: &str) -> Result<usize, FeedError> {
        let parsed = parse(text)?;
        let n = parsed.len();
        let src = self.sources.len();
        self.sources.push(source.to_string());
        for e in parsed {
            let id = self.entries.len() as u32;
            if let Entry::Domain(d) = &e {
                self.domains.entry(d.clone()).or_insert(id);
            }
            self.entries.push((e, src));
        }
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `id` and the source it came from.
    pub fn entry(&self, id: u32) -> Option<(&Entry, &str)> {
        let (e, src) = self.entries.get(id as usize)?;
        Some((e, self.sources[*src].as_str()))
    }

    /// Every address and network, with its entry id.
    pub fn nets(&self) -> impl Iterator<Item = (IpAddr, u8, u32)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, (e, _))| match e {
                Entry::Net { addr, prefix } => Some((*addr, *prefix, id as u32)),
                Entry::Domain(_) => None,
            })
    }

    /// The entry that lists `name` or a domain above it (`eu.pool.example` is covered by
    /// `pool.example`).
    pub fn match_name(&self, name: &str) -> Option<u32> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let mut rest = name.as_str();
        loop {
            if let Some(&id) = self.domains.get(rest) {
                return Some(id);
            }
            rest = rest.split_once('.')?.1;
            if !rest.contains('.') {
                return None; // never match a bare top-level domain
            }
        }
    }

    /// The entry that lists `addr`, longest prefix first (user space's copy, for
    /// connections that predate the sensor).
    pub fn match_addr(&self, addr: IpAddr) -> Option<u32> {
        // A v6 socket reaching a v4 host shows it as `::ffff:a.b.c.d`.
        let addr = addr.to_canonical();
        self.nets()
            .filter(|(net, prefix, _)| {
                masked(addr, *prefix) == *net && net.is_ipv4() == addr.is_ipv4()
            })
            .max_by_key(|(_, prefix, _)| *prefix)
            .map(|(_, _, id)| id)
    }
}

/// Host names a command line points at: `-o HOST:PORT`, `--url=HOST`, and any
/// `stratum+tcp://HOST:PORT`-style URL (not `http(s)://`, which a browser or `curl` reading a
/// pool's web site has). Lower case, without port or path.
pub fn hosts_in_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev = "";
    for arg in argv.iter().skip(1) {
        let value = if matches!(prev, "-o" | "--url" | "-url" | "--pool" | "-P" | "--server") {
            Some(arg.as_str())
        } else {
            ["--url=", "-o=", "--pool=", "--server="]
                .iter()
                .find_map(|p| arg.strip_prefix(p))
                // A web address is someone reading a pool's site, not a miner's pool.
                .or_else(|| {
                    (arg.contains("://")
                        && !arg.starts_with("http://")
                        && !arg.starts_with("https://"))
                    .then_some(arg.as_str())
                })
        };
        prev = arg;
        let Some(v) = value else { continue };
        let v = v.rsplit_once("://").map_or(v, |(_, rest)| rest);
        let v = v.rsplit_once('@').map_or(v, |(_, host)| host);
        let host = v.split(['/', ':']).next().unwrap_or("");
        if let Ok(d) = domain(host)
            && !out.contains(&d)
        {
            out.push(d);
        }
    }
    out
}

/// Words that mark a host name as a mining pool's when they make up a whole part of it
/// (between dots, dashes and underscores): `xmr-eu.example`, `pool.example.net`.
const POOL_WORDS: &[&str] = &[
    "pool",
    "pools",
    "mine",
    "mining",
    "miner",
    "miners",
    "xmr",
    "monero",
    "nicehash",
    "stratum",
    "randomx",
    "cryptonight",
    "hashvault",
    "nanopool",
    "minexmr",
    "moneroocean",
    "supportxmr",
    "2miners",
    "f2pool",
    "c3pool",
    "herominers",
    "unmineable",
    "ethermine",
    "xmrpool",
];

/// Names that carry those words for other reasons: the NTP pool, which every node asks for
/// the time, and the OpenPGP key-server pool. A name under one of these is never pool-like.
const NOT_POOLS: &[&str] = &["ntp.org", "ntppool.org", "sks-keyservers.net"];

/// The pool-like word in `name`, if it has one and is not one of the known look-alikes.
/// Weak evidence by design: `mine` and `pool` are ordinary words.
pub fn pool_like(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if NOT_POOLS
        .iter()
        .any(|d| name == *d || name.ends_with(&format!(".{d}")))
    {
        return None;
    }
    name.split(['.', '-', '_']).find_map(|part| {
        POOL_WORDS
            .iter()
            .find(|w| part == **w)
            .copied()
            .or_else(|| part.starts_with("xmr").then_some("xmr"))
            .or_else(|| part.starts_with("monero").then_some("monero"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, prefix: u8) -> Entry {
        Entry::Net {
            addr: s.parse().unwrap(),
            prefix,
        }
    }

    #[test]
    fn parses_every_entry_form() {
        let feed = "# pools\n\
                    pool.example.org\n\
                    *.XMR.example.net.   # wildcard, upper case, trailing dot\n\
                    192.0.2.7\n\
                    198.51.100.77/24\n\
                    203.0.113.9:3333\n\
                    [2001:db8::7]:443\n\
                    2001:db8:1::/48\n\
                    pool.example.com:14444\n\
                    \n";
        assert_eq!(
            parse(feed).unwrap(),
            vec![
                Entry::Domain("pool.example.org".into()),
                Entry::Domain("xmr.example.net".into()),
                net("192.0.2.7", 32),
                net("198.51.100.0", 24),
                net("203.0.113.9", 32),
                net("2001:db8::7", 128),
                net("2001:db8:1::", 48),
                Entry::Domain("pool.example.com".into()),
            ]
        );
    }

    #[test]
    fn committee_style_tables_load_with_their_header() {
        let feed = "ip,port,first_seen,note\n\
                    192.0.2.7,3333,2024-01-02,xmr\n\
                    \"192.0.2.8\";4444;2024-01-03\n\
                    192.0.2.9\t5555\n";
        assert_eq!(
            parse(feed).unwrap(),
            vec![
                net("192.0.2.7", 32),
                net("192.0.2.8", 32),
                net("192.0.2.9", 32)
            ]
        );
    }

    #[test]
    fn a_bad_line_refuses_the_feed_and_says_where() {
        let e = parse("192.0.2.7\n300.1.2.3\n").unwrap_err();
        assert_eq!((e.line, e.why), (2, "not a domain, address or network"));
        assert_eq!(
            e.to_string(),
            "line 2: not a domain, address or network (`300.1.2.3`)"
        );
        assert_eq!(
            parse("10.0.0.0/33").unwrap_err().why,
            "prefix length too long for the address"
        );
        assert_eq!(parse("localhost").unwrap_err().line, 1);
        assert_eq!(
            parse("a..b").unwrap_err().why,
            "domain name with an empty or over-long label"
        );
        assert!(parse("\u{0}garbage\u{7f}").is_err());
        // Only a first line can be a header.
        assert!(parse("192.0.2.7\nip,port\n").is_err());
    }

    #[test]
    fn names_match_their_domain_and_subdomains_only() {
        let mut l = Lists::new();
        l.add("bundled", "pool.example.org\nexample.net\n").unwrap();
        assert_eq!(l.match_name("pool.example.org"), Some(0));
        assert_eq!(l.match_name("EU.Pool.Example.Org."), Some(0));
        assert_eq!(l.match_name("example.org"), None);
        assert_eq!(l.match_name("notpool.example.org"), None);
        assert_eq!(l.match_name("a.b.example.net"), Some(1));
        assert_eq!(l.match_name("net"), None);
        let (e, src) = l.entry(1).unwrap();
        assert_eq!((e.to_string().as_str(), src), ("example.net", "bundled"));
    }

    #[test]
    fn addresses_match_the_longest_network() {
        let mut l = Lists::new();
        l.add("a", "10.0.0.0/8\n10.1.2.0/24\n2001:db8::/32\n")
            .unwrap();
        assert_eq!(l.match_addr("10.1.2.3".parse().unwrap()), Some(1));
        assert_eq!(l.match_addr("10.9.9.9".parse().unwrap()), Some(0));
        assert_eq!(l.match_addr("11.0.0.1".parse().unwrap()), None);
        assert_eq!(l.match_addr("2001:db8::1".parse().unwrap()), Some(2));
        assert_eq!(l.nets().count(), 3);
        assert_eq!(l.entry(1).unwrap().0.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn finds_pool_hosts_on_command_lines() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            hosts_in_argv(&argv("xmrig -o pool.example.org:443 -u W")),
            vec!["pool.example.org"]
        );
        assert_eq!(
            hosts_in_argv(&argv(
                "miner --url=stratum+tcp://W.rig@EU.Pool.Example.net:3333/x"
            )),
            vec!["eu.pool.example.net"]
        );
        assert_eq!(
            hosts_in_argv(&argv(
                "t-rex -a kawpow -o stratum+ssl://rvn.example.com:5555"
            )),
            vec!["rvn.example.com"]
        );
        // Addresses and plain arguments are not names.
        assert!(hosts_in_argv(&argv("xmrig -o 10.1.2.3:3333 -o x")).is_empty());
        // Reading a pool's web site is not mining there.
        assert!(hosts_in_argv(&argv("curl -sL https://pool.example.org/api/stats")).is_empty());
        assert!(hosts_in_argv(&argv("chromium http://pool.example.org/")).is_empty());
    }

    #[test]
    fn pool_like_words_are_whole_parts_and_spare_the_ntp_pool() {
        assert_eq!(pool_like("xmr-eu1.example.net"), Some("xmr"));
        assert_eq!(pool_like("xmrpool.example"), Some("xmrpool"));
        assert_eq!(pool_like("gulf.moneroocean.stream"), Some("moneroocean"));
        assert_eq!(pool_like("pool.example.org."), Some("pool"));
        assert_eq!(pool_like("moneroworld.example"), Some("monero"));
        // Parts, not substrings.
        assert_eq!(pool_like("threadpool.example.org"), None);
        assert_eq!(pool_like("mail.spool.example.org"), None);
        assert_eq!(pool_like("minecraft.example.org"), None);
        assert_eq!(pool_like("examine.example.org"), None);
        // The NTP and key-server pools.
        assert_eq!(pool_like("0.debian.pool.ntp.org"), None);
        assert_eq!(pool_like("pool.ntp.org"), None);
        assert_eq!(pool_like("hkps.pool.sks-keyservers.net"), None);
    }
}
