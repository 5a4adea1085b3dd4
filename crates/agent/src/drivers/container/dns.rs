//! The DNS resolver instances use: a forwarder on their gateway address.
//!
//! An instance's `/etc/resolv.conf` says `nameserver <gateway>`, and the
//! agent answers there (UDP and TCP port 53) by relaying each query, as it
//! is, to the host's own resolvers. Instances thus get a resolver that
//! works whatever the host's `resolv.conf` says: it often names
//! `127.0.0.53` (systemd-resolved) or another address only the host can
//! reach, and the host's firewall lets instances reach only this port of
//! the host anyway.
//!
//! It is a relay, not a resolver: no parsing beyond the header (and the
//! question, to make a SERVFAIL), no caching. Each query goes to the
//! upstreams in turn, each given [`UPSTREAM_TIMEOUT`]; if none answers, the
//! client gets a SERVFAIL. The work in flight is bounded
//! ([`MAX_IN_FLIGHT`] queries, [`MAX_TCP_CONNS`] TCP connections), so that
//! an instance can neither turn the agent into a traffic amplifier nor
//! exhaust its sockets: a UDP query beyond the bound is dropped (the client
//! retries), a TCP connection beyond it is closed.

use super::fail;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tessera_agent_api::AgentError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// The DNS header; anything shorter is not a query.
const HEADER_LEN: usize = 12;
/// The largest UDP query read (longer datagrams are cut to this).
const MAX_UDP_QUERY: usize = 4096;
/// How long an upstream has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle (or take to send a message, or to
/// read an answer) before its connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP client connections at once; more are closed as they come.
const MAX_TCP_CONNS: usize = 64;
/// Queries relayed at once, over UDP and TCP together.
const MAX_IN_FLIGHT: usize = 256;

/// A DNS forwarder: answers instances' queries on `listen` (UDP and TCP
/// port 53 of their gateway) by asking `upstreams` in turn.
///
/// It owns its tasks: dropping it stops them (soon after; [`Self::close`]
/// to know when).
pub(super) struct DnsForwarder {
    addr: SocketAddr,
    /// Tells the task to stop; `None` once closed. (The agent holds its
    /// forwarder for its whole life: only the tests close one.)
    #[cfg_attr(not(test), allow(dead_code))]
    stop: Option<oneshot::Sender<()>>,
    /// `None` once closed.
    task: Option<JoinHandle<()>>,
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl DnsForwarder {
    /// Listens on `listen`, UDP and TCP on the same port (with port 0, one
    /// that is free for both), and relays queries to `upstreams`.
    pub(super) async fn spawn(
        listen: SocketAddr,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsForwarder, AgentError> {
        let (udp, tcp) = bind(listen)
            .await
            .map_err(|e| fail(format!("serving DNS on {listen}: cannot listen: {e}")))?;
        let addr = udp
            .local_addr()
            .map_err(|e| fail(format!("serving DNS on {listen}: {e}")))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(udp, tcp, upstreams.into(), stopped));
        Ok(DnsForwarder {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address UDP is bound to (TCP is bound to the same).
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; answers once the sockets are closed and every query
    /// and connection in flight has ended.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The upstream resolvers of this host: the `nameserver` lines of the
/// given `resolv.conf` text (IPv4 and IPv6, port 53), in order; if none, an
/// empty list. Addresses that do not parse (such as IPv6 ones with a zone,
/// `fe80::1%eth0`) are left out.
pub(super) fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Binds UDP, then TCP on the port UDP got. With port 0, a port free for
/// UDP but not for TCP is given up for another; with a given port, one
/// still held (by a forwarder being torn down) is retried a while.
async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let bound = async {
            let udp = UdpSocket::bind(listen).await?;
            let port = udp.local_addr()?.port();
            let tcp = TcpListener::bind(SocketAddr::new(listen.ip(), port)).await?;
            Ok::<_, io::Error>((udp, tcp))
        }
        .await;
        match bound {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                if listen.port() != 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            bound => return bound,
        }
    }
}

/// The forwarder's task: reads UDP queries and accepts TCP connections
/// until told to stop; queries and connections are tasks in a set it owns,
/// so that ending it (or aborting it) ends them.
async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    upstreams: Arc<[SocketAddr]>,
    mut stop: oneshot::Receiver<()>,
) {
    let udp = Arc::new(udp);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    let mut work = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        tokio::select! {
            _ = &mut stop => break,
            received = udp.recv_from(&mut buf) => match received {
                Ok((len, client)) => {
                    if len < HEADER_LEN {
                        continue;
                    }
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        tracing::debug!(%client, "DNS: too many queries in flight; dropping one");
                        continue;
                    };
                    work.spawn(answer_udp(
                        udp.clone(),
                        client,
                        buf[..len].to_vec(),
                        upstreams.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS: reading a UDP query");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, client)) => {
                    let Ok(permit) = conns.clone().try_acquire_owned() else {
                        tracing::debug!(%client, "DNS: too many TCP connections; closing one");
                        continue;
                    };
                    work.spawn(serve_tcp_client(
                        stream,
                        client,
                        upstreams.clone(),
                        in_flight.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS: accepting a TCP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = work.join_next(), if !work.is_empty() => {}
        }
    }
    work.shutdown().await;
}

/// Answers one UDP query; `_permit` holds its place among those in flight.
async fn answer_udp(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    query: Vec<u8>,
    upstreams: Arc<[SocketAddr]>,
    _permit: OwnedSemaphorePermit,
) {
    let answer = relay(&query, &upstreams, client, Transport::Udp).await;
    if let Err(e) = socket.send_to(&answer, client).await {
        tracing::debug!(%client, error = %e, "DNS: sending an answer over UDP");
    }
}

/// Serves one TCP client: length-prefixed queries, one after the other,
/// until it closes the connection or stays idle for [`TCP_IDLE`];
/// `_conn` holds its place among the connections.
async fn serve_tcp_client(
    mut stream: TcpStream,
    client: SocketAddr,
    upstreams: Arc<[SocketAddr]>,
    in_flight: Arc<Semaphore>,
    _conn: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let query = match timeout(TCP_IDLE, read_message(&mut stream)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "DNS: reading a query over TCP");
                return;
            }
        };
        if query.len() < HEADER_LEN {
            return;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let answer = relay(&query, &upstreams, client, Transport::Tcp).await;
        drop(permit);
        match timeout(TCP_IDLE, write_message(&mut stream, &answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "DNS: sending an answer over TCP");
                return;
            }
            Err(_) => return,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// Asks the upstreams in turn; answers the first answer, or a SERVFAIL.
async fn relay(
    query: &[u8],
    upstreams: &[SocketAddr],
    client: SocketAddr,
    transport: Transport,
) -> Vec<u8> {
    for &upstream in upstreams {
        let answer = match transport {
            Transport::Udp => relay_udp(query, upstream).await,
            Transport::Tcp => relay_tcp(query, upstream).await,
        };
        match answer {
            Ok(answer) => return answer,
            Err(e) => tracing::debug!(
                %client, %upstream, ?transport, error = %e, "DNS: relaying a query failed"
            ),
        }
    }
    servfail(query)
}

/// Sends `query` to `upstream` from a fresh socket; answers the first
/// answer with the query's id.
async fn relay_udp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let exchange = async {
        let local = match upstream {
            SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let len = socket.recv(&mut buf).await?;
            if same_id(&buf[..len], query) {
                buf.truncate(len);
                return Ok(buf);
            }
        }
    };
    timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Sends `query` to `upstream` over a fresh TCP connection; answers the
/// first answer with the query's id.
async fn relay_tcp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let _ = stream.set_nodelay(true);
        write_message(&mut stream, query).await?;
        while let Some(answer) = read_message(&mut stream).await? {
            if same_id(&answer, query) {
                return Ok(answer);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the upstream closed the connection without answering",
        ))
    };
    timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

/// Whether `answer` is a whole header with the id of `query`.
fn same_id(answer: &[u8], query: &[u8]) -> bool {
    answer.len() >= HEADER_LEN && answer[..2] == query[..2]
}

/// Reads a length-prefixed message (RFC 7766); `None` on a clean close
/// before its first byte.
async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    if reader.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut len[1..]).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Writes a length-prefixed message (RFC 7766), in one write.
async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too long"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    writer.write_all(&framed).await?;
    writer.flush().await
}

/// A SERVFAIL answer to `query` (at least a header): its id, opcode and RD
/// bit, QR and RA set, RCODE 2, its question section if it parses (else
/// none), and no answer, authority or additional records.
fn servfail(query: &[u8]) -> Vec<u8> {
    let question_end = question_end(query);
    let mut answer = query[..question_end.unwrap_or(HEADER_LEN)].to_vec();
    // QR, then the query's opcode (0x78) and RD (0x01); AA and TC clear.
    answer[2] = 0x80 | (query[2] & 0x79);
    // RA, Z clear, RCODE 2 (SERVFAIL).
    answer[3] = 0x80 | 2;
    if question_end.is_none() {
        answer[4..6].fill(0);
    }
    answer[6..HEADER_LEN].fill(0);
    answer
}

/// Where the question section of `message` (at least a header) ends, if
/// it parses.
fn question_end(message: &[u8]) -> Option<usize> {
    let count = u16::from_be_bytes([message[4], message[5]]);
    let mut at = HEADER_LEN;
    for _ in 0..count {
        // The name: labels up to an empty one, or up to a pointer.
        loop {
            let len = *message.get(at)?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    at += 1;
                    break;
                }
                0x00 => at += 1 + usize::from(len),
                0xC0 => {
                    message.get(at + 1)?;
                    at += 2;
                    break;
                }
                _ => return None,
            }
        }
        // The type and class.
        at += 4;
        if at > message.len() {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    const EXTRA: &[u8] = b"\xc0\x0c-the-answer";

    /// A query for `example.com` A IN with id `id` and RD set.
    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        q
    }

    /// The fake upstream's answer to `query`.
    fn fake_answer(query: &[u8]) -> Vec<u8> {
        let mut answer = query.to_vec();
        answer[2] |= 0x80;
        answer.extend_from_slice(EXTRA);
        answer
    }

    /// An upstream answering every query, over UDP and TCP on one port,
    /// with `fake_answer`.
    async fn fake_upstream() -> SocketAddr {
        let (udp, tcp) = bind(LOCALHOST).await.expect("binding the fake upstream");
        let addr = udp.local_addr().expect("its address");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&fake_answer(&buf[..len]), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(query)) = read_message(&mut stream).await {
                        if write_message(&mut stream, &fake_answer(&query))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// An upstream that reads UDP queries and never answers.
    async fn silent_upstream() -> SocketAddr {
        let udp = UdpSocket::bind(LOCALHOST)
            .await
            .expect("binding the silent upstream");
        let addr = udp.local_addr().expect("its address");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while udp.recv_from(&mut buf).await.is_ok() {}
        });
        addr
    }

    async fn ask_udp(forwarder: &DnsForwarder, query: &[u8], wait: Duration) -> Vec<u8> {
        let client = UdpSocket::bind(LOCALHOST).await.expect("binding a client");
        client
            .connect(forwarder.local_addr())
            .await
            .expect("connecting");
        client.send(query).await.expect("sending");
        let mut buf = vec![0u8; 65535];
        let len = timeout(wait, client.recv(&mut buf))
            .await
            .expect("an answer in time")
            .expect("receiving");
        buf.truncate(len);
        buf
    }

    #[tokio::test]
    async fn udp_query_gets_the_upstreams_answer() {
        let upstream = fake_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![upstream])
            .await
            .expect("spawn");
        assert_ne!(forwarder.local_addr().port(), 0);
        let q = query(0x1234);
        let answer = ask_udp(&forwarder, &q, Duration::from_secs(2)).await;
        assert_eq!(answer, fake_answer(&q));
        assert_eq!(answer[..2], [0x12, 0x34]);
        forwarder.close().await;
    }

    #[tokio::test]
    async fn tcp_query_gets_the_upstreams_answer() {
        let upstream = fake_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![upstream])
            .await
            .expect("spawn");
        let mut stream = TcpStream::connect(forwarder.local_addr())
            .await
            .expect("connecting");
        // Two queries on one connection.
        for id in [0xbeef, 0x0102] {
            let q = query(id);
            write_message(&mut stream, &q).await.expect("sending");
            let answer = timeout(Duration::from_secs(2), read_message(&mut stream))
                .await
                .expect("an answer in time")
                .expect("reading")
                .expect("an answer, not a close");
            assert_eq!(answer, fake_answer(&q));
            assert_eq!(answer[..2], id.to_be_bytes());
        }
        forwarder.close().await;
    }

    #[tokio::test]
    async fn short_datagrams_are_ignored() {
        let upstream = fake_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![upstream])
            .await
            .expect("spawn");
        let client = UdpSocket::bind(LOCALHOST).await.expect("binding a client");
        client
            .connect(forwarder.local_addr())
            .await
            .expect("connecting");
        client.send(b"\x00\x07short").await.expect("sending");
        let q = query(0x4242);
        client.send(&q).await.expect("sending");
        let mut buf = vec![0u8; 65535];
        let len = timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("an answer in time")
            .expect("receiving");
        assert_eq!(buf[..len], fake_answer(&q));
        forwarder.close().await;
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_servfail() {
        let upstream = silent_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![upstream])
            .await
            .expect("spawn");
        let q = query(0xabcd);
        let started = Instant::now();
        let answer = ask_udp(&forwarder, &q, Duration::from_millis(2500)).await;
        assert!(started.elapsed() >= UPSTREAM_TIMEOUT);
        assert_eq!(answer[..2], [0xab, 0xcd]);
        assert_eq!(answer[2], 0x81, "QR and RD");
        assert_eq!(answer[3] & 0x0f, 2, "SERVFAIL");
        assert_eq!(answer.len(), q.len(), "the header and the question");
        assert_eq!(answer[4..6], [0, 1]);
        assert_eq!(answer[HEADER_LEN..], q[HEADER_LEN..]);
        forwarder.close().await;
    }

    #[tokio::test]
    async fn the_next_upstream_answers_when_the_first_is_silent() {
        let silent = silent_upstream().await;
        let good = fake_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![silent, good])
            .await
            .expect("spawn");
        let q = query(0x5151);
        let answer = ask_udp(&forwarder, &q, Duration::from_secs(4)).await;
        assert_eq!(answer, fake_answer(&q));
        forwarder.close().await;
    }

    #[tokio::test]
    async fn no_upstreams_give_servfail_over_tcp() {
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![]).await.expect("spawn");
        let mut stream = TcpStream::connect(forwarder.local_addr())
            .await
            .expect("connecting");
        let q = query(0x0707);
        write_message(&mut stream, &q).await.expect("sending");
        let answer = timeout(Duration::from_secs(2), read_message(&mut stream))
            .await
            .expect("an answer in time")
            .expect("reading")
            .expect("an answer, not a close");
        assert_eq!(answer, servfail(&q));
        assert_eq!(answer[3] & 0x0f, 2);
        forwarder.close().await;
    }

    #[tokio::test]
    async fn tcp_connections_beyond_the_limit_are_closed() {
        let upstream = fake_upstream().await;
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![upstream])
            .await
            .expect("spawn");
        let mut streams = Vec::new();
        for id in 0..MAX_TCP_CONNS as u16 {
            let mut stream = TcpStream::connect(forwarder.local_addr())
                .await
                .expect("connecting");
            let q = query(id);
            write_message(&mut stream, &q).await.expect("sending");
            let answer = timeout(Duration::from_secs(2), read_message(&mut stream))
                .await
                .expect("an answer in time")
                .expect("reading");
            assert_eq!(answer, Some(fake_answer(&q)));
            streams.push(stream);
        }
        let mut extra = TcpStream::connect(forwarder.local_addr())
            .await
            .expect("connecting");
        let mut buf = [0u8; 1];
        let read = timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        // Once one goes, another may come.
        streams.pop();
        let q = query(0x9999);
        let answer = timeout(Duration::from_secs(2), async {
            loop {
                let mut stream = TcpStream::connect(forwarder.local_addr()).await?;
                write_message(&mut stream, &q).await?;
                if let Some(answer) = read_message(&mut stream).await? {
                    return Ok::<_, io::Error>(answer);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("an answer in time");
        assert_eq!(answer.expect("an answer"), fake_answer(&q));
        forwarder.close().await;
    }

    #[tokio::test]
    async fn close_stops_serving() {
        let forwarder = DnsForwarder::spawn(LOCALHOST, vec![]).await.expect("spawn");
        let addr = forwarder.local_addr();
        forwarder.close().await;
        assert!(TcpStream::connect(addr).await.is_err());
        // The port is free again, for UDP and TCP.
        let (udp, _tcp) = bind(addr).await.expect("binding the same port");
        assert_eq!(udp.local_addr().expect("its address"), addr);
    }

    #[test]
    fn servfail_keeps_the_question_and_drops_the_rest() {
        let mut q = query(0x0a0b);
        // An EDNS OPT record in the additional section.
        q[11] = 1;
        q.extend_from_slice(b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00");
        let answer = servfail(&q);
        assert_eq!(answer.len(), query(0x0a0b).len());
        assert_eq!(answer[..4], [0x0a, 0x0b, 0x81, 0x82]);
        assert_eq!(answer[4..12], [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(answer[HEADER_LEN..], q[HEADER_LEN..answer.len()]);

        // A question that does not parse: the header alone.
        let mut q = query(0x0c0d);
        q.truncate(HEADER_LEN + 5);
        q[2] = 0x00; // RD clear
        let answer = servfail(&q);
        assert_eq!(answer, [0x0c, 0x0d, 0x80, 0x82, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn upstreams_come_from_the_nameserver_lines() {
        let text = "# Generated by someone\n\
                    ; a comment\n\
                    nameserver 10.0.0.2\n\
                    #nameserver 10.9.9.9\n\
                    search x\n\
                    options edns0\n\
                    nameserver   ::1  \n\
                    nameserver not-an-address\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 53),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53),
            ]
        );
        assert!(upstreams_from_resolv_conf("search x\n").is_empty());
    }
}
