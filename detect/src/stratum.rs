//! Recognises the first bytes a client sends on a TCP connection as a Stratum mining call.
//!
//! Stratum is newline-delimited JSON-RPC. We parse the first JSON value (so key order and
//! whitespace do not matter) and look at `method` and `params`. A proxy handshake
//! in front (SOCKS4/4a/5, HTTP CONNECT) is skipped first. When the capture budget ran out
//! before the line ended, a bounded scan for the `"method"` value decides instead.
//!
//! Solo miners skip the pool and ask a node daemon for work over HTTP: XMRig with
//! `"daemon": true` POSTs `getblocktemplate` to monerod's `/json_rpc`, bitcoind and geth
//! take `getblocktemplate` and `eth_getWork` the same way. An HTTP POST's JSON body is judged
//! like a Stratum line, and its `User-Agent` names the agent.
use serde_json::Value;

/// Which family of the protocol the call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// XMRig and other CryptoNote/RandomX miners: `login`, `submit`, `keepalived`.
    Monero,
    /// Bitcoin-style Stratum V1: `mining.subscribe`, `mining.authorize`, `mining.configure`.
    Bitcoin,
    /// EthereumStratum/1.0.0 (NiceHash) over `mining.subscribe`, and EthereumStratum/2.0
    /// `mining.hello`.
    EthereumStratum,
    /// The ETHProxy flavour: `eth_submitLogin`, `eth_getWork`, `eth_submitWork`.
    EthProxy,
    /// Solo mining against a node daemon's RPC: `getblocktemplate`, `submitblock`.
    SoloRpc,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Monero => "Monero/CryptoNote",
            Dialect::Bitcoin => "Bitcoin",
            Dialect::EthereumStratum => "EthereumStratum",
            Dialect::EthProxy => "Ethereum proxy",
            Dialect::SoloRpc => "solo-mining daemon RPC",
        }
    }
}

/// A proxy handshake seen before the Stratum call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proxy {
    Socks4 { target: String },
    Socks5 { target: String },
    HttpConnect { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StratumCall {
    pub dialect: Dialect,
    pub method: String,
    /// Miner software, when the call names it (`agent`, or the first subscribe param).
    pub agent: Option<String>,
    /// Wallet or worker login, when present.
    pub login: Option<String>,
    pub proxy: Option<Proxy>,
    /// Recognised from a truncated capture by the `"method"` scan, not a full JSON parse.
    pub partial: bool,
    /// The body of an HTTP POST (a daemon's RPC), not a Stratum line.
    pub http: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes yet to decide.
    NeedMore,
    NotStratum,
    Stratum(StratumCall),
}

/// Methods a client sends, with their dialect. `mining.subscribe` is refined by its params.
const METHODS: &[(&str, Dialect)] = &[
    ("login", Dialect::Monero),
    ("submit", Dialect::Monero),
    ("keepalived", Dialect::Monero),
    ("getjob", Dialect::Monero),
    ("mining.subscribe", Dialect::Bitcoin),
    ("mining.authorize", Dialect::Bitcoin),
    ("mining.configure", Dialect::Bitcoin),
    ("mining.extranonce.subscribe", Dialect::Bitcoin),
    ("mining.suggest_difficulty", Dialect::Bitcoin),
    ("mining.suggest_target", Dialect::Bitcoin),
    ("mining.submit", Dialect::Bitcoin),
    ("mining.hello", Dialect::EthereumStratum),
    ("mining.noop", Dialect::EthereumStratum),
    ("eth_submitLogin", Dialect::EthProxy),
    ("eth_getWork", Dialect::EthProxy),
    ("eth_submitWork", Dialect::EthProxy),
    ("eth_submitHashrate", Dialect::EthProxy),
    ("getblocktemplate", Dialect::SoloRpc),
    ("get_block_template", Dialect::SoloRpc),
    ("submitblock", Dialect::SoloRpc),
    ("submit_block", Dialect::SoloRpc),
];

/// Monero's `login`/`submit`/`keepalived` are short, common words: they only count when the
/// params have the shape the protocol gives them.
fn monero_params_ok(method: &str, params: &Value) -> bool {
    let Some(p) = params.as_object() else {
        return false;
    };
    match method {
        "login" => p.get("login").is_some_and(Value::is_string),
        "submit" => p.contains_key("job_id") && p.contains_key("nonce"),
        "keepalived" | "getjob" => p.get("id").is_some_and(Value::is_string),
        _ => false,
    }
}

/// Classifies the bytes a client has sent so far. `complete` says no more bytes will come
/// (the capture budget is spent or the connection closed).
pub fn classify(buf: &[u8], complete: bool) -> Verdict {
    let (proxy, rest) = match strip_proxy(buf) {
        ProxyStrip::NeedMore if complete => return Verdict::NotStratum,
        ProxyStrip::NeedMore => return Verdict::NeedMore,
        ProxyStrip::Done(p, rest) => (p, rest),
    };
    let body = trim_start(rest);
    let (body, http_agent) = match http_post(body) {
        Http::Not => (body, None),
        Http::NeedMore if complete => return Verdict::NotStratum,
        Http::NeedMore => return Verdict::NeedMore,
        Http::Post { agent, body } => (trim_start(body), Some(agent)),
    };
    let http = http_agent.is_some();
    if body.is_empty() {
        return if complete {
            Verdict::NotStratum
        } else {
            Verdict::NeedMore
        };
    }
    if body[0] != b'{' {
        return Verdict::NotStratum;
    }
    // The first JSON value, wherever it ends (normally at the newline that ends the line).
    let verdict = match serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(v)) => judge(&v, proxy),
        Some(Err(e)) if e.is_eof() => {
            if complete {
                scan_method(body, proxy)
            } else {
                Verdict::NeedMore
            }
        }
        _ => Verdict::NotStratum,
    };
    match verdict {
        Verdict::Stratum(mut call) if http => {
            call.http = true;
            if call.agent.is_none() {
                call.agent = http_agent.flatten();
            }
            Verdict::Stratum(call)
        }
        v => v,
    }
}

/// What an HTTP request in front of a JSON body came to.
enum Http<'a> {
    /// Not an HTTP POST.
    Not,
    NeedMore,
    /// A POST: its `User-Agent`, and what follows the headers.
    Post {
        agent: Option<String>,
        body: &'a [u8],
    },
}

/// Headers longer than this are not a miner's.
const HTTP_HEADERS_MAX: usize = 8192;

fn http_post(b: &[u8]) -> Http<'_> {
    const POST: &[u8] = b"POST ";
    if b.len() < POST.len() {
        return if POST.starts_with(b) {
            Http::NeedMore
        } else {
            Http::Not
        };
    }
    if !b.starts_with(POST) {
        return Http::Not;
    }
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if b.len() > HTTP_HEADERS_MAX {
            Http::Not
        } else {
            Http::NeedMore
        };
    };
    let agent = b[..end]
        .split(|&c| c == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&c| c == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"user-agent")
                .then(|| String::from_utf8_lossy(trim_start(&value[1..])).into_owned())
        })
        .next();
    Http::Post {
        agent,
        body: &b[end + 4..],
    }
}

fn judge(v: &Value, proxy: Option<Proxy>) -> Verdict {
    let Some(method) = v.get("method").and_then(Value::as_str) else {
        return Verdict::NotStratum;
    };
    let Some(&(_, mut dialect)) = METHODS.iter().find(|(m, _)| *m == method) else {
        return Verdict::NotStratum;
    };
    let params = v.get("params").unwrap_or(&Value::Null);
    if dialect == Dialect::Monero && !monero_params_ok(method, params) {
        return Verdict::NotStratum;
    }
    let mut agent = None;
    let mut login = None;
    match params {
        Value::Object(p) => {
            agent = p.get("agent").and_then(Value::as_str).map(str::to_owned);
            login = p
                .get("login")
                .or_else(|| p.get("wallet_address"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Value::Array(a) => {
            let first = a.first().and_then(Value::as_str).map(str::to_owned);
            match method {
                "mining.subscribe" => {
                    agent = first;
                    if a.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.starts_with("EthereumStratum")))
                    {
                        dialect = Dialect::EthereumStratum;
                    }
                }
                "mining.authorize" | "eth_submitLogin" => login = first,
                _ => {}
            }
        }
        _ => {}
    }
    if method == "mining.hello"
        && let Some(a) = params.get("agent").and_then(Value::as_str)
    {
        agent = Some(a.to_owned());
    }
    // eth_* calls carry a `worker` field beside params in the ETHProxy dialect.
    if agent.is_none()
        && let Some(w) = v.get("worker").and_then(Value::as_str)
    {
        agent = Some(w.to_owned());
    }
    Verdict::Stratum(StratumCall {
        dialect,
        method: method.to_owned(),
        agent,
        login,
        proxy,
        partial: false,
        http: false,
    })
}

/// For a first line longer than the capture: find `"method"` `:` `"<name>"` in the bytes.
fn scan_method(line: &[u8], proxy: Option<Proxy>) -> Verdict {
    const KEY: &[u8] = b"\"method\"";
    let Some(at) = line.windows(KEY.len()).position(|w| w == KEY) else {
        return Verdict::NotStratum;
    };
    let rest = trim_start(&line[at + KEY.len()..]);
    let Some(rest) = rest.strip_prefix(b":") else {
        return Verdict::NotStratum;
    };
    let Some(rest) = trim_start(rest).strip_prefix(b"\"") else {
        return Verdict::NotStratum;
    };
    let Some(end) = rest.iter().position(|&c| c == b'"') else {
        return Verdict::NotStratum;
    };
    let method = String::from_utf8_lossy(&rest[..end]);
    // Short Monero words are too ambiguous without their params.
    match METHODS
        .iter()
        .find(|(m, d)| *m == method && *d != Dialect::Monero)
    {
        Some(&(m, dialect)) => Verdict::Stratum(StratumCall {
            dialect,
            method: m.to_owned(),
            agent: None,
            login: None,
            proxy,
            partial: true,
            http: false,
        }),
        None if method == "login" && line.windows(8).any(|w| w == b"\"agent\":") => {
            Verdict::Stratum(StratumCall {
                dialect: Dialect::Monero,
                method: "login".into(),
                agent: None,
                login: None,
                proxy,
                partial: true,
                http: false,
            })
        }
        None => Verdict::NotStratum,
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    &b[n..]
}

enum ProxyStrip<'a> {
    NeedMore,
    Done(Option<Proxy>, &'a [u8]),
}

/// Skips a client-side proxy handshake. Only the client's bytes are captured, so a
/// handshake appears as its requests back to back.
fn strip_proxy(b: &[u8]) -> ProxyStrip<'_> {
    match b.first() {
        Some(5) => socks5(b),
        Some(4) => socks4(b),
        Some(b'C') if b.starts_with(b"CONNECT ") || b"CONNECT ".starts_with(b) => {
            match b.windows(4).position(|w| w == b"\r\n\r\n") {
                None => ProxyStrip::NeedMore,
                Some(end) => {
                    let line = &b[8..];
                    let target = line.split(|&c| c == b' ').next().unwrap_or_default();
                    ProxyStrip::Done(
                        Some(Proxy::HttpConnect {
                            target: String::from_utf8_lossy(target).into(),
                        }),
                        &b[end + 4..],
                    )
                }
            }
        }
        _ => ProxyStrip::Done(None, b),
    }
}

/// SOCKS5: greeting `05 n methods…`, optional user/pass auth `01 ulen user plen pass`,
/// request `05 01 00 atyp addr port`.
fn socks5(b: &[u8]) -> ProxyStrip<'_> {
    let Some(&n) = b.get(1) else {
        return ProxyStrip::NeedMore;
    };
    let mut at = 2 + n as usize;
    let Some(&next) = b.get(at) else {
        return ProxyStrip::NeedMore;
    };
    if next == 1 {
        // RFC 1929 username/password sub-negotiation.
        let Some(&ulen) = b.get(at + 1) else {
            return ProxyStrip::NeedMore;
        };
        let Some(&plen) = b.get(at + 2 + ulen as usize) else {
            return ProxyStrip::NeedMore;
        };
        at += 3 + ulen as usize + plen as usize;
    }
    let Some(req) = b.get(at..at + 4) else {
        return ProxyStrip::NeedMore;
    };
    if req[0] != 5 || req[1] != 1 {
        return ProxyStrip::Done(None, b); // not a CONNECT request: leave it to the JSON test
    }
    let (host, len) = match req[3] {
        1 => match b.get(at + 4..at + 8) {
            Some(a) => (format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]), 4),
            None => return ProxyStrip::NeedMore,
        },
        3 => {
            let Some(&l) = b.get(at + 4) else {
                return ProxyStrip::NeedMore;
            };
            match b.get(at + 5..at + 5 + l as usize) {
                Some(name) => (String::from_utf8_lossy(name).into_owned(), 1 + l as usize),
                None => return ProxyStrip::NeedMore,
            }
        }
        4 => match b.get(at + 4..at + 20) {
            Some(a) => {
                let a: [u8; 16] = a.try_into().unwrap_or([0; 16]);
                (format!("[{}]", std::net::Ipv6Addr::from(a)), 16)
            }
            None => return ProxyStrip::NeedMore,
        },
        _ => return ProxyStrip::Done(None, b),
    };
    let Some(port) = b.get(at + 4 + len..at + 6 + len) else {
        return ProxyStrip::NeedMore;
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    ProxyStrip::Done(
        Some(Proxy::Socks5 {
            target: format!("{host}:{port}"),
        }),
        &b[at + 6 + len..],
    )
}

/// SOCKS4/4a: `04 01 port(2) ip(4) userid\0 [host\0 when ip is 0.0.0.x]`.
fn socks4(b: &[u8]) -> ProxyStrip<'_> {
    let Some(h) = b.get(..8) else {
        return ProxyStrip::NeedMore;
    };
    if h[1] != 1 {
        return ProxyStrip::Done(None, b);
    }
    let port = u16::from_be_bytes([h[2], h[3]]);
    let Some(uend) = b[8..].iter().position(|&c| c == 0) else {
        return ProxyStrip::NeedMore;
    };
    let mut at = 8 + uend + 1;
    let host = if h[4] == 0 && h[5] == 0 && h[6] == 0 && h[7] != 0 {
        let Some(hend) = b[at..].iter().position(|&c| c == 0) else {
            return ProxyStrip::NeedMore;
        };
        let name = String::from_utf8_lossy(&b[at..at + hend]).into_owned();
        at += hend + 1;
        name
    } else {
        format!("{}.{}.{}.{}", h[4], h[5], h[6], h[7])
    };
    ProxyStrip::Done(
        Some(Proxy::Socks4 {
            target: format!("{host}:{port}"),
        }),
        &b[at..],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const XMRIG: &[u8] = include_bytes!("../../tests/fixtures/xmrig-6.16.0-login.bin");

    fn stratum(buf: &[u8]) -> StratumCall {
        match classify(buf, false) {
            Verdict::Stratum(c) => c,
            v => panic!(
                "expected Stratum for {:?}, got {v:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn not(buf: &[u8]) {
        for complete in [false, true] {
            let v = classify(buf, complete);
            assert!(
                v == Verdict::NotStratum || (!complete && v == Verdict::NeedMore),
                "{:?} (complete={complete}) gave {v:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(
            classify(buf, true),
            Verdict::NotStratum,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }

    #[test]
    fn real_xmrig_login() {
        let c = stratum(XMRIG);
        assert_eq!(c.dialect, Dialect::Monero);
        assert_eq!(c.method, "login");
        assert_eq!(
            c.agent.as_deref(),
            Some("XMRig/6.16.0 (Linux x86_64) libuv/1.42.0 gcc/5.4.0")
        );
        assert!(c.login.unwrap().starts_with("44AFFq5k"));
    }

    #[test]
    fn xmrig_login_split_at_every_byte() {
        for cut in 1..XMRIG.len() - 1 {
            assert_eq!(
                classify(&XMRIG[..cut], false),
                Verdict::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn truncated_capture_still_recognised() {
        let c = match classify(&XMRIG[..200], true) {
            Verdict::Stratum(c) => c,
            v => panic!("{v:?}"),
        };
        assert!(c.partial && c.method == "login");
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let c = stratum(
            b"  {\n \"params\" : { \"agent\":\"cpuminer\", \"pass\":\"x\",\"login\" : \"w\" } ,\
              \"method\" :\"login\",   \"id\": 1 }\n",
        );
        assert_eq!(
            (c.method.as_str(), c.agent.as_deref()),
            ("login", Some("cpuminer"))
        );
    }

    #[test]
    fn bitcoin_dialect() {
        let c = stratum(
            b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cgminer/4.10.0\"]}\n",
        );
        assert_eq!(
            (c.dialect, c.agent.as_deref()),
            (Dialect::Bitcoin, Some("cgminer/4.10.0"))
        );
        let c = stratum(
            b"{\"params\":[\"bc1qworker.1\",\"x\"],\"id\":2,\"method\":\"mining.authorize\"}\n",
        );
        assert_eq!(
            (c.method.as_str(), c.login.as_deref()),
            ("mining.authorize", Some("bc1qworker.1"))
        );
        let c = stratum(
            b"{\"id\":1,\"method\":\"mining.configure\",\"params\":[[\"version-rolling\"],\
              {\"version-rolling.mask\":\"1fffe000\"}]}\n",
        );
        assert_eq!(c.dialect, Dialect::Bitcoin);
    }

    #[test]
    fn ethereum_dialects_and_nicehash() {
        let c = stratum(
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"NBMiner/39.5\",\"EthereumStratum/1.0.0\"]}\n",
        );
        assert_eq!(c.dialect, Dialect::EthereumStratum);
        let c = stratum(
            b"{\"id\":0,\"jsonrpc\":\"2.0\",\"method\":\"mining.hello\",\"params\":{\"agent\":\"lolMiner/1.52\",\
              \"host\":\"pool.example\",\"port\":\"1b0e\",\"proto\":\"EthereumStratum/2.0.0\"}}\n",
        );
        assert_eq!(
            (c.dialect, c.agent.as_deref()),
            (Dialect::EthereumStratum, Some("lolMiner/1.52"))
        );
        let c = stratum(
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"eth_submitLogin\",\"worker\":\"rig1\",\
              \"params\":[\"0x52bc44d5378309ee2abf1539bf71de1b7d7be3b5\",\"x\"]}\n",
        );
        assert_eq!(
            (c.dialect, c.login.as_deref().map(|l| &l[..4])),
            (Dialect::EthProxy, Some("0x52"))
        );
        assert_eq!(
            stratum(b"{\"id\":5,\"method\":\"eth_getWork\",\"params\":[]}\n").method,
            "eth_getWork"
        );
    }

    #[test]
    fn mid_stream_monero_calls_from_old_connections() {
        let c = stratum(b"{\"id\":7,\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{\"id\":\"a1b2\"}}\n");
        assert_eq!(c.method, "keepalived");
        let c = stratum(
            b"{\"id\":8,\"method\":\"submit\",\"params\":{\"id\":\"a1\",\"job_id\":\"j\",\"nonce\":\"0a0b\",\"result\":\"ff\"}}\n",
        );
        assert_eq!(c.method, "submit");
    }

    #[test]
    fn behind_socks5_socks4_and_http_connect() {
        let mut b = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0x0d, 0x05];
        b.extend_from_slice(XMRIG);
        assert_eq!(
            stratum(&b).proxy,
            Some(Proxy::Socks5 {
                target: "127.0.0.1:3333".into()
            })
        );

        let mut b = vec![
            5, 2, 0, 2, 1, 3, b'b', b'o', b'b', 2, b'p', b'w', 5, 1, 0, 3, 4,
        ];
        b.extend_from_slice(b"pool\x11\x5c");
        b.extend_from_slice(XMRIG);
        assert_eq!(
            stratum(&b).proxy,
            Some(Proxy::Socks5 {
                target: "pool:4444".into()
            })
        );

        let mut b = vec![4, 1, 0x0d, 0x05, 0, 0, 0, 1, b'u', 0];
        b.extend_from_slice(b"pool.example\0");
        b.extend_from_slice(XMRIG);
        assert_eq!(
            stratum(&b).proxy,
            Some(Proxy::Socks4 {
                target: "pool.example:3333".into()
            })
        );

        let mut b = b"CONNECT 10.9.8.7:443 HTTP/1.1\r\nHost: 10.9.8.7:443\r\n\r\n".to_vec();
        b.extend_from_slice(XMRIG);
        assert_eq!(
            stratum(&b).proxy,
            Some(Proxy::HttpConnect {
                target: "10.9.8.7:443".into()
            })
        );
        assert_eq!(
            classify(b"CONNECT 10.9.8.7:443 HTTP/1.1\r\n", false),
            Verdict::NeedMore
        );
    }

    /// What XMRig 6.16.0 with `"daemon": true` sent to a stand-in monerod here.
    const XMRIG_SOLO: &[u8] =
        b"POST /json_rpc HTTP/1.1\r\nConnection: close\r\nContent-Length: 211\r\n\
        Content-Type: application/json\r\nHost: 127.0.0.1\r\n\
        User-Agent: XMRig/6.16.0 (Linux x86_64) libuv/1.42.0 gcc/5.4.0\r\n\r\n\
        {\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"getblocktemplate\",\"params\":\
        {\"wallet_address\":\"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3Xjrp\",\
        \"extra_nonce\":\"ec6b0c5100246218\"}}";

    #[test]
    fn solo_mining_over_http_to_a_daemon() {
        let c = stratum(XMRIG_SOLO);
        assert_eq!(c.dialect, Dialect::SoloRpc);
        assert_eq!(c.method, "getblocktemplate");
        assert!(c.http);
        assert_eq!(
            c.agent.as_deref(),
            Some("XMRig/6.16.0 (Linux x86_64) libuv/1.42.0 gcc/5.4.0")
        );
        assert!(c.login.unwrap().starts_with("44AFFq5k"));
        // Cut anywhere in the headers or body: more is needed, never a wrong verdict.
        for cut in 1..XMRIG_SOLO.len() {
            assert_eq!(
                classify(&XMRIG_SOLO[..cut], false),
                Verdict::NeedMore,
                "{cut}"
            );
        }
        // geth's solo miners ask for work the same way.
        let eth = b"POST / HTTP/1.1\r\nHost: node\r\n\r\n{\"id\":1,\"method\":\"eth_getWork\",\"params\":[]}";
        let c = stratum(eth);
        assert_eq!(
            (c.dialect, c.http, c.agent),
            (Dialect::EthProxy, true, None)
        );
        // An ordinary POST, a GET, and headers with no end are not mining.
        not(b"POST /api HTTP/1.1\r\nUser-Agent: curl/8\r\n\r\n{\"method\":\"status\"}");
        not(b"GET /json_rpc HTTP/1.1\r\n\r\n");
        let mut endless = b"POST / HTTP/1.1\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', HTTP_HEADERS_MAX + 1));
        assert_eq!(classify(&endless, false), Verdict::NotStratum);
        assert_eq!(classify(b"POST / HTTP/1.1\r\n", true), Verdict::NotStratum);
    }

    #[test]
    fn negatives() {
        not(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:3333\r\nUser-Agent: curl/8.0\r\n\r\n");
        not(
            b"POST /login HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"method\":\"login\"}",
        );
        // TLS 1.2 ClientHello record header and start.
        not(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xaa, 0xbb,
        ]);
        not(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        not(b"*1\r\n$4\r\nPING\r\n");
        not(b"*3\r\n$3\r\nSET\r\n$5\r\nlogin\r\n$1\r\nx\r\n");
        not(b"{\"jsonrpc\":\"2.0\",\"method\":\"getStatus\",\"params\":{},\"id\":1}\n");
        not(b"{\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"user\":\"alice\",\"password\":\"x\"},\"id\":1}\n");
        not(b"{\"method\":\"submit\",\"params\":{\"form\":\"contact\"}}\n");
        not(b"{\"hello\": \"world\"}\n");
        not(b"{not json at all\n");
        not(b"[1,2,3]\n");
        not(b"");
        not(&[4, 2, 0, 0]);
    }

    #[test]
    fn random_bytes_never_panic_or_match() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for round in 0..2000 {
            let len = (round % 300) + 1;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for complete in [false, true] {
                assert!(
                    !matches!(classify(&buf, complete), Verdict::Stratum(_)),
                    "{buf:?}"
                );
            }
        }
    }
}
