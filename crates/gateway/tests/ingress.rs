//! The gateway end to end: a real upstream on 127.0.0.1 reached through a
//! real gateway by host name and port, over HTTP and TLS.

mod support;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::StatusCode;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tessera_gateway::{
    CertificateSource, Gateway, GatewayConfig, MemoryRoutes, PortMapping, StartError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const ID: &str = "abc12345";
const HOST: &str = "abc12345.compute.localhost";

/// Routes for one running container with one rule to `upstream`.
fn routes_to(port: u16, upstream: std::net::SocketAddr) -> Arc<MemoryRoutes> {
    let routes = Arc::new(MemoryRoutes::new());
    routes.set_container(ID, Some(upstream.ip()));
    routes.set_rule(ID, port, upstream.port());
    routes
}

#[tokio::test]
async fn an_http_rule_reaches_the_container_by_host_name() {
    let upstream = upstream().await;
    let routes = routes_to(80, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let port_80 = port_of(&gateway, 80);

    let request = hyper::Request::builder()
        .method("POST")
        .uri("/hello?name=world")
        .header("host", "ABC12345.Compute.Localhost:80")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("x-kept", "end-to-end")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let answer = send(TcpStream::connect(port_80).await.expect("connect"), request).await;

    assert_eq!(answer.status, StatusCode::OK);
    let seen = answer.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["target"], "/hello?name=world");
    assert_eq!(seen["body"], "payload");
    let headers = &seen["headers"];
    assert_eq!(
        headers["host"], "ABC12345.Compute.Localhost:80",
        "Host passes unchanged"
    );
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "the client's own claim is replaced"
    );
    assert_eq!(headers["x-real-ip"], "127.0.0.1", "so is this one");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "ABC12345.Compute.Localhost:80");
    assert_eq!(headers["x-forwarded-port"], "80");
    assert_eq!(headers["x-kept"], "end-to-end");
    assert!(
        headers.get("x-secret").is_none(),
        "a header named by Connection is hop-by-hop"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_443_rule_is_served_over_tls_with_the_generated_certificate() {
    let upstream = upstream().await;
    let routes = routes_to(443, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let pem = gateway.certificate_pem().to_string();

    let answer = get_tls(port_of(&gateway, 443), HOST, &pem, "/secure").await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = answer.json();
    assert_eq!(seen["target"], "/secure", "the container gets plain HTTP");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-port"], "443");

    // The certificate is a wildcard: any container's name verifies.
    let other = get_tls(
        port_of(&gateway, 443),
        "deadbeef.compute.localhost",
        &pem,
        "/",
    )
    .await;
    assert_eq!(other.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        other.error(),
        "no ingress rule for port 443 on container deadbeef"
    );

    // Kept on disk, the key readable by its owner only.
    let key = dir.path().join("wildcard.compute.localhost.key.pem");
    let mode = std::fs::metadata(&key)
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let on_disk = std::fs::read_to_string(dir.path().join("wildcard.compute.localhost.cert.pem"))
        .expect("the certificate file");
    assert_eq!(on_disk, pem);
    gateway.stop().await;
}

#[tokio::test]
async fn a_host_outside_the_certificate_fails_verification() {
    let routes = Arc::new(MemoryRoutes::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let failed = connect_tls(
        port_of(&gateway, 443),
        "abc12345.example.com",
        gateway.certificate_pem(),
    )
    .await;
    assert!(
        failed.is_err(),
        "the certificate covers only *.compute.localhost"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn tls_and_plain_http_share_an_8xxx_port() {
    let upstream = upstream().await;
    let routes = routes_to(8123, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let port = port_of(&gateway, 8123);

    let plain = get(port, HOST, "/plain").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");

    let tls = get_tls(port, HOST, gateway.certificate_pem(), "/tls").await;
    assert_eq!(tls.status, StatusCode::OK);
    assert_eq!(tls.json()["target"], "/tls");
    assert_eq!(tls.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(tls.json()["headers"]["x-forwarded-port"], "8123");
    gateway.stop().await;
}

#[tokio::test]
async fn rules_added_and_removed_at_runtime_take_effect_within_a_second() {
    let upstream = upstream().await;
    let routes = Arc::new(MemoryRoutes::new());
    routes.set_container(ID, Some(upstream.ip()));
    routes.set_container("0000beef", Some(upstream.ip()));
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    assert_eq!(gateway.local_addr(8200), None, "no rule uses 8200 yet");

    // Added: the port opens by polling alone (no refresh call).
    routes.set_rule(ID, 8200, upstream.port());
    routes.set_rule("0000beef", 8200, upstream.port());
    let port = opened(&gateway, 8200, Duration::from_secs(1))
        .await
        .expect("8200 opens within a second");
    assert_eq!(get(port, HOST, "/").await.status, StatusCode::OK);

    // One rule removed: the port stays open for the other, and answers 502.
    routes.remove_rule(ID, 8200);
    let refused = get(port, HOST, "/").await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        refused.error(),
        "no ingress rule for port 8200 on container abc12345"
    );
    assert_eq!(refused.json()["reason"], "no_rule");
    let other = get(port, "0000beef.compute.localhost", "/").await;
    assert_eq!(other.status, StatusCode::OK);

    // The last rule removed: the port closes.
    routes.remove_rule("0000beef", 8200);
    assert!(
        closed(&gateway, 8200, Duration::from_secs(1)).await,
        "8200 closes within a second"
    );
    assert!(
        TcpStream::connect(port).await.is_err(),
        "nothing listens on 8200 any more"
    );

    // 80 and 443 stay open whatever the rules; ports outside the range are ignored.
    routes.set_rule(ID, 9000, upstream.port());
    gateway.refresh();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open: Vec<u16> = gateway.bound().keys().copied().collect();
    assert_eq!(open, vec![80, 443]);
    gateway.stop().await;
}

#[tokio::test]
async fn requests_with_nowhere_to_go_get_a_502_saying_why() {
    let upstream = upstream().await;
    let routes = routes_to(80, upstream);
    routes.set_rule(ID, 8300, upstream.port());
    routes.set_rule("0ff0ff00", 80, upstream.port()); // known, not running
    let dead = dead_port().await;
    routes.set_container("dead0000", Some(dead.ip()));
    routes.set_rule("dead0000", 80, dead.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let port_80 = port_of(&gateway, 80);

    let cases = [
        // No such container reads as one without a rule: which exist is
        // not told to whoever asks.
        (
            port_80,
            "deadbeef.compute.localhost",
            "no ingress rule for port 80 on container deadbeef",
            "no_rule",
        ),
        (
            port_80,
            "www.compute.localhost",
            "no ingress rule for port 80 on container www",
            "no_rule",
        ),
        (
            port_80,
            "0ff0ff00.compute.localhost",
            "container 0ff0ff00 is not running",
            "not_running",
        ),
        (
            port_of(&gateway, 443),
            "abc12345.compute.localhost",
            "no ingress rule for port 443 on container abc12345",
            "no_rule",
        ),
        (
            port_80,
            "dead0000.compute.localhost",
            &format!(
                "container dead0000 does not answer on its port {} (ingress port 80): connection refused",
                dead.port()
            ),
            "container_unreachable",
        ),
    ];
    for (addr, host, error, reason) in cases {
        let answer = if addr == port_80 {
            get(addr, host, "/").await
        } else {
            get_tls(addr, host, gateway.certificate_pem(), "/").await
        };
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{host}");
        assert_eq!(answer.headers["content-type"], "application/json");
        assert_eq!(answer.error(), error, "{host}");
        assert_eq!(answer.json()["reason"], reason, "{host}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_host_under_another_domain_is_misdirected_and_a_malformed_request_is_a_400() {
    let upstream = upstream().await;
    let routes = routes_to(80, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let port_80 = port_of(&gateway, 80);

    for host in [
        "abc12345.example.com",
        "compute.localhost",
        "127.0.0.1:20080",
        "a.abc12345.compute.localhost",
    ] {
        let answer = get(port_80, host, "/").await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(
            answer.error().contains("is not a container hostname"),
            "{host}: {}",
            answer.error()
        );
    }

    // No Host header at all.
    let request = hyper::Request::builder()
        .uri("/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = send(TcpStream::connect(port_80).await.expect("connect"), request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), "the request has no Host header");

    // Not HTTP at all.
    let mut stream = TcpStream::connect(port_80).await.expect("connect");
    stream
        .write_all(b"THIS IS NOT HTTP\r\n\r\n")
        .await
        .expect("write");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn the_self_signed_certificate_survives_a_restart() {
    let upstream = upstream().await;
    let routes = routes_to(443, upstream);
    let dir = tempfile::tempdir().expect("tempdir");

    let first = start(dir.path(), &routes).await;
    let pem = first.certificate_pem().to_string();
    first.stop().await;

    let second = start(dir.path(), &routes).await;
    assert_eq!(second.certificate_pem(), pem);
    // A client that trusted the first gateway's certificate trusts the second.
    let answer = get_tls(port_of(&second, 443), HOST, &pem, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    second.stop().await;

    let elsewhere = tempfile::tempdir().expect("tempdir");
    let third = start(elsewhere.path(), &routes).await;
    assert_ne!(
        third.certificate_pem(),
        pem,
        "another directory, another certificate"
    );
    third.stop().await;
}

#[tokio::test]
async fn the_operators_certificate_is_served_when_given() {
    let upstream = upstream().await;
    let routes = routes_to(443, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("a key");
    let params =
        rcgen::CertificateParams::new(vec!["*.compute.localhost".to_string()]).expect("params");
    let certificate = params.self_signed(&key).expect("a certificate");
    let certificate_path = dir.path().join("operator.crt");
    let key_path = dir.path().join("operator.key");
    std::fs::write(&certificate_path, certificate.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");

    let config = GatewayConfig {
        certificate: CertificateSource::Files {
            certificate: certificate_path,
            private_key: key_path.clone(),
        },
        ..config(dir.path())
    };
    let gateway = Gateway::start(config.clone(), routes.clone())
        .await
        .expect("starts");
    assert_eq!(gateway.certificate_pem(), certificate.pem());
    let answer = get_tls(port_of(&gateway, 443), HOST, &certificate.pem(), "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    gateway.stop().await;

    // A key that is not PEM is a start error, not a panic.
    std::fs::write(&key_path, "not a key").expect("write");
    let failed = Gateway::start(config, routes.clone()).await;
    assert!(
        matches!(failed, Err(StartError::Certificate(_))),
        "{:?}",
        failed.err()
    );
}

#[tokio::test]
async fn a_websocket_passes_through() {
    let upstream = websocket_upstream().await;
    let routes = routes_to(8080, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;

    let stream = TcpStream::connect(port_of(&gateway, 8080))
        .await
        .expect("connect");
    let (mut socket, response) =
        tokio_tungstenite::client_async("ws://abc12345.compute.localhost:8080/chat", stream)
            .await
            .expect("the WebSocket handshake goes through");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "world"] {
        socket.send(Message::text(text)).await.expect("send");
        let echoed = socket.next().await.expect("a message").expect("a frame");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn any_upgrade_passes_through_over_tls() {
    let upstream = upstream().await;
    let routes = routes_to(443, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;

    let mut stream = connect_tls(port_of(&gateway, 443), HOST, gateway.certificate_pem())
        .await
        .expect("TLS");
    stream
        .write_all(b"GET /raw HTTP/1.1\r\nHost: abc12345.compute.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("the answer's head");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream
        .write_all(b"ping over the tunnel")
        .await
        .expect("write");
    let mut echoed = [0u8; 20];
    stream.read_exact(&mut echoed).await.expect("the echo");
    assert_eq!(&echoed, b"ping over the tunnel");
    gateway.stop().await;
}

#[tokio::test]
async fn stop_lets_a_request_in_flight_finish_and_closes_the_ports() {
    let upstream = upstream().await;
    let routes = routes_to(80, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start(dir.path(), &routes).await;
    let port_80 = port_of(&gateway, 80);

    let in_flight = tokio::spawn(async move { get(port_80, HOST, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.stop().await;
    let answer = in_flight.await.expect("the request task");
    assert_eq!(answer.status, StatusCode::OK, "the slow request finished");
    assert!(
        TcpStream::connect(port_80).await.is_err(),
        "port 80 is closed"
    );
}

#[tokio::test]
async fn configuration_errors_stop_the_start() {
    let routes = Arc::new(MemoryRoutes::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_domain = GatewayConfig {
        domain: "not a domain".into(),
        ..config(dir.path())
    };
    let failed = Gateway::start(bad_domain, routes.clone()).await;
    assert!(matches!(failed, Err(StartError::Domain(_))));

    let bad_offset = GatewayConfig {
        ports: PortMapping::Offset(60_000),
        ..config(dir.path())
    };
    let failed = Gateway::start(bad_offset, routes.clone()).await;
    assert!(matches!(failed, Err(StartError::Offset(60_000))));

    // Port 80 taken: the start fails and says where.
    let taken = tokio::net::TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind");
    let taken_port = taken.local_addr().expect("address").port();
    let Some(offset) = taken_port.checked_sub(80) else {
        return;
    };
    let clash = GatewayConfig {
        ports: PortMapping::Offset(offset),
        ..config(dir.path())
    };
    match Gateway::start(clash, routes).await {
        Err(StartError::Bind { port, address, .. }) => {
            assert_eq!(port, 80);
            assert_eq!(address.port(), taken_port);
        }
        other => panic!("expected a bind error, got {:?}", other.err()),
    }
}

/// A gateway with `adjust` applied to its configuration.
async fn start_with(
    dir: &std::path::Path,
    routes: &Arc<MemoryRoutes>,
    adjust: impl FnOnce(&mut GatewayConfig),
) -> Gateway {
    let mut config = config(dir);
    adjust(&mut config);
    Gateway::start(config, routes.clone())
        .await
        .expect("the gateway starts")
}

/// Whether the gateway closes a connection on `addr` at once (over a
/// limit) rather than keeping it for a request.
async fn turned_away(addr: std::net::SocketAddr) -> bool {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A container that takes connections and never answers gets its clients
/// a 504 once the wait is over, and its connections back: before, each
/// request held a connection to it (and a file descriptor) for ever.
#[tokio::test]
async fn a_container_that_never_answers_is_a_504() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            kept.push(stream);
        }
    });
    let routes = routes_to(80, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_with(dir.path(), &routes, |c| {
        c.upstream_response_timeout = Duration::from_millis(300);
    })
    .await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        get(port_of(&gateway, 80), HOST, "/"),
    )
    .await
    .expect("an answer, not a wait for ever");
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        answer.error().contains("did not begin its answer"),
        "{answer:?}"
    );
    gateway.stop().await;
    held.abort();
}

/// One address holds at most its share of the gateway's connections, an
/// upgraded one (a WebSocket) included, so no client fills it for
/// everyone; a connection that ends gives its place back.
#[tokio::test]
async fn an_address_holds_at_most_its_share_of_connections() {
    let upstream = websocket_upstream().await;
    let routes = routes_to(8080, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_with(dir.path(), &routes, |c| c.max_per_address = 2).await;
    let port = port_of(&gateway, 8080);

    let idle = TcpStream::connect(port).await.expect("connect");
    let stream = TcpStream::connect(port).await.expect("connect");
    let (socket, _) =
        tokio_tungstenite::client_async("ws://abc12345.compute.localhost:8080/chat", stream)
            .await
            .expect("the WebSocket handshake goes through");
    assert!(turned_away(port).await, "a third connection of one address");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!turned_away(port).await, "a place came free");
    // The upgraded connection still holds its place.
    let _third = TcpStream::connect(port).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(turned_away(port).await, "the tunnel counts");
    drop(socket);
    gateway.stop().await;
}

/// The container's time to answer runs once the request is all sent: an
/// upload slower than that time reaches a container that answers when it
/// has read it.
#[tokio::test]
async fn a_slow_upload_is_not_the_containers_delay() {
    let upstream = upstream().await;
    let routes = routes_to(80, upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_with(dir.path(), &routes, |c| {
        c.upstream_response_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = TcpStream::connect(port_of(&gateway, 80))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: abc12345.compute.localhost\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("head");
    for byte in b"8 bytes!" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&[*byte]).await.expect("a byte");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("8 bytes!"), "{answer}");
    gateway.stop().await;
}
