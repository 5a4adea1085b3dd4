//! The way out of a tenant's image pull: a forward proxy on the host's
//! loopback, started for one pull, through which the pull's HTTP client
//! makes every connection it makes (`CONNECT host:port`).
//!
//! A pull for an instance runs in the host's network, past the firewall
//! that keeps instances from the host's own and private addresses, and the
//! registry is the tenant's choice. Checking the registry's name before
//! the pull ([`super::registry`]) is not enough: the registry may redirect
//! a blob or name a token realm at the host's loopback or a metadata
//! service, and its name may resolve to a public address when checked and
//! to a private one when connected (DNS rebinding). The guard resolves
//! each destination itself, refuses it unless every address it has is
//! allowed, and connects to the address it checked. Only tunnels are
//! relayed (HTTPS); a plain HTTP request, which a redirect to `http://`
//! would make, is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whether a pull may connect to an address: `Err` says why not.
pub(super) type Allowed = Arc<dyn Fn(IpAddr) -> Result<(), String> + Send + Sync>;

/// The longest request head a client may send before its tunnel.
const MAX_HEAD: usize = 8 * 1024;

/// How long a destination may take to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running guard; stopped, with the tunnels it relays, when dropped.
pub(super) struct PullGuard {
    addr: SocketAddr,
    refused: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PullGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PullGuard {
    /// Listens on a free port of the loopback, relaying tunnels to the
    /// destinations `allowed` lets through.
    pub(super) async fn start(allowed: Allowed) -> std::io::Result<PullGuard> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(Mutex::new(None));
        let said = refused.clone();
        let task = tokio::spawn(async move {
            let mut tunnels = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (allowed, said) = (allowed.clone(), said.clone());
                tunnels.spawn(async move { relay(client, &allowed, &said).await });
                while tunnels.try_join_next().is_some() {}
            }
        });
        Ok(PullGuard {
            addr,
            refused,
            task,
        })
    }

    /// The proxy's URL, for the pull's HTTP client.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Why the guard last refused a destination, if it did.
    pub(super) fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads one `CONNECT` request from `client`, checks its destination and
/// relays the tunnel. A refused destination is noted in `said` (before the
/// client hears of it); a failure that is not a refusal (a destination
/// that does not answer) is told the client as a 502 or 504, the client's
/// to report.
async fn relay(mut client: TcpStream, allowed: &Allowed, said: &Mutex<Option<String>>) {
    let Ok(head) = read_head(&mut client).await else {
        return;
    };
    let Some(target) = parse_connect(&head) else {
        let why = "only HTTPS connections are made for a tenant's image pull".to_string();
        return refuse(&mut client, said, why).await;
    };
    let addresses = match resolve(&target).await {
        Ok(addresses) => addresses,
        Err(why) => return answer(&mut client, "502 Bad Gateway", &why).await,
    };
    for addr in &addresses {
        if let Err(why) = allowed(canonical(addr.ip())) {
            let why = format!("{} is at {}: {why}", target.0, canonical(addr.ip()));
            return refuse(&mut client, said, why).await;
        }
    }
    // Each address passed the check: the first that answers is used, as a
    // client trying them in turn would.
    let mut failures = Vec::new();
    let mut connected = None;
    for addr in &addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(upstream)) => {
                connected = Some(upstream);
                break;
            }
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!("{addr}: no answer in {CONNECT_TIMEOUT:?}")),
        }
    }
    let Some(mut upstream) = connected else {
        return answer(&mut client, "502 Bad Gateway", &failures.join("; ")).await;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

async fn refuse(client: &mut TcpStream, said: &Mutex<Option<String>>, why: String) {
    tracing::warn!("a tenant's image pull was refused a connection: {why}");
    *said.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
    answer(client, "403 Forbidden", &why).await;
}

/// The request head, up to its blank line.
async fn read_head(client: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD || client.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).map_err(|_| std::io::ErrorKind::InvalidData.into())
}

/// The host and port of a `CONNECT host:port HTTP/1.x` request.
fn parse_connect(head: &str) -> Option<(String, u16)> {
    let line = head.lines().next()?;
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "CONNECT" || !version.starts_with("HTTP/1.") || words.next().is_some() {
        return None;
    }
    let (host, port) = target.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Every address of the destination.
async fn resolve((host, port): &(String, u16)) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, *port)]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .map_err(|e| format!("{host} not found: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(found)
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) as itself.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

async fn answer(client: &mut TcpStream, status: &str, why: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard that lets through `only`.
    async fn guard(only: Vec<IpAddr>) -> PullGuard {
        PullGuard::start(Arc::new(move |ip| {
            if only.contains(&ip) {
                Ok(())
            } else {
                Err("not allowed".into())
            }
        }))
        .await
        .expect("guard")
    }

    /// Sends `request` to the guard and reads what it answers first.
    async fn ask(guard: &PullGuard, request: &str) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(guard.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut said = Vec::new();
        let mut byte = [0u8; 1];
        while !said.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.expect("read"), 1, "{said:?}");
            said.push(byte[0]);
        }
        (stream, String::from_utf8(said).expect("text"))
    }

    /// An echo server on the loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tunnels_reach_allowed_addresses_only() {
        let target = echo().await;
        let open = guard(vec![target.ip()]).await;
        let (mut tunnel, said) = ask(&open, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert!(said.starts_with("HTTP/1.1 200 "), "{said}");
        tunnel.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        tunnel.read_exact(&mut back).await.expect("echoed");
        assert_eq!(&back, b"ping");
        assert_eq!(open.refused(), None);

        // The same destination, by an address or a name the guard does
        // not allow, is refused before any connection; so is a plain
        // HTTP request, which a redirect to http:// would make.
        let closed = guard(Vec::new()).await;
        for (request, names) in [
            (format!("CONNECT {target} HTTP/1.1\r\n\r\n"), "127.0.0.1"),
            (
                format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", target.port()),
                "localhost is at",
            ),
            (
                format!(
                    "CONNECT [::ffff:127.0.0.1]:{} HTTP/1.1\r\n\r\n",
                    target.port()
                ),
                "is at 127.0.0.1",
            ),
            (
                format!("GET http://{target}/v2/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
                "only HTTPS",
            ),
        ] {
            let (_, said) = ask(&closed, &request).await;
            assert!(said.starts_with("HTTP/1.1 403 "), "{request}: {said}");
            let why = closed.refused().expect("refused");
            assert!(why.contains(names), "{request}: {why}");
        }
    }

    #[test]
    fn connect_requests_are_read() {
        let read = |head: &str| parse_connect(head);
        assert_eq!(
            read("CONNECT registry.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("registry.example".into(), 443))
        );
        assert_eq!(
            read("CONNECT [2001:db8::1]:5000 HTTP/1.1\r\n\r\n"),
            Some(("2001:db8::1".into(), 5000))
        );
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "CONNECT registry.example HTTP/1.1\r\n\r\n",
            "CONNECT :443 HTTP/1.1\r\n\r\n",
            "CONNECT a:99999 HTTP/1.1\r\n\r\n",
            "CONNECT a:443 SPDY/3\r\n\r\n",
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
    }
}
