//! Host ports forwarded to instances: a userspace TCP proxy per instance.
//! It admits only clients its instance's security groups let reach port 22
//! (the proxy's own connection to the instance comes from the host, which
//! the firewall does not filter).
//!
//! A forward is a task that owns its listener and its connections, so
//! ending the task closes the port and every connection through it;
//! [`Proxy::close`] waits until it has.
//!
//! Each connection holds two of the process's file descriptors (the
//! client's and the instance's), and the instance, whose SSH server is its
//! tenant's to replace, may keep them open for ever: a forward relays at
//! most [`MAX_PER_FORWARD`] connections at once, the forwards of one
//! project's instances [`MAX_PER_PROJECT`], and all of this process's
//! forwards [`MAX_FORWARDED`]; a connection over any is closed as it is
//! accepted. Without them one tenant's instance held every descriptor of
//! the agent (and, under `tessera up`, of the API); without the project's
//! bound, one tenant's many instances held every place of the others'.

use super::fail;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;
use tessera_agent_api::AgentError;
use tessera_core::network::GroupRules;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Connections one forward relays at once.
const MAX_PER_FORWARD: usize = 64;

/// Connections all of this process's forwards relay at once.
const MAX_FORWARDED: usize = 4096;

/// Connections the forwards of one project's instances relay at once: a
/// quarter of all.
const MAX_PER_PROJECT: usize = MAX_FORWARDED / 4;

static FORWARDED: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_FORWARDED)));

/// Each project's places, shared by its forwards while any is open.
static PROJECTS: LazyLock<Mutex<HashMap<String, Weak<Semaphore>>>> = LazyLock::new(Mutex::default);

/// The places of `project`'s forwards.
fn project_places(project: &str) -> Arc<Semaphore> {
    let mut projects = PROJECTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(places) = projects.get(project).and_then(Weak::upgrade) {
        return places;
    }
    projects.retain(|_, places| places.strong_count() > 0);
    let places = Arc::new(Semaphore::new(MAX_PER_PROJECT));
    projects.insert(project.to_string(), Arc::downgrade(&places));
    places
}

/// A running forward; dropping it closes the port and its connections
/// (soon after: [`Proxy::close`] to know when).
pub(super) struct Proxy {
    pub port: u16,
    pub target: SocketAddr,
    /// The instance's security groups, whose rules for TCP port 22 say
    /// which clients are admitted; empty: any client (an instance made
    /// without groups).
    groups: Arc<RwLock<Vec<GroupRules>>>,
    /// Whose places its new connections take ([`project_places`]), and
    /// those places.
    project: RwLock<String>,
    places: Arc<RwLock<Arc<Semaphore>>>,
    /// `None` once closed.
    task: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Proxy {
    /// Listens on `0.0.0.0:port` and forwards every connection to `target`,
    /// an instance of `project`'s. A port still held (by a proxy being torn
    /// down) is retried a while.
    pub async fn spawn(
        port: u16,
        target: SocketAddr,
        groups: Vec<GroupRules>,
        project: &str,
    ) -> Result<Proxy, AgentError> {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("0.0.0.0", port)).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(fail(format!(
                        "forwarding host port {port} to {target}: cannot listen: {e}"
                    )));
                }
            }
        };
        let groups = Arc::new(RwLock::new(groups));
        let places = Arc::new(RwLock::new(project_places(project)));
        let task = tokio::spawn(serve(listener, target, groups.clone(), places.clone()));
        Ok(Proxy {
            port,
            target,
            groups,
            project: RwLock::new(project.to_string()),
            places,
            task: Some(task),
        })
    }

    /// Takes its new connections' places from `project`'s from now on (an
    /// instance's record that did not name its project, adopted before
    /// its spec came); connections open keep theirs.
    pub fn set_project(&self, project: &str) {
        let mut held = self.project.write().unwrap_or_else(|p| p.into_inner());
        if *held != project {
            *self.places.write().unwrap_or_else(|p| p.into_inner()) = project_places(project);
            *held = project.to_string();
        }
    }

    /// Admits clients by these groups' rules from now on.
    pub fn set_groups(&self, groups: &[GroupRules]) {
        let mut held = self.groups.write().unwrap_or_else(|p| p.into_inner());
        if *held != groups {
            *held = groups.to_vec();
        }
    }

    pub fn is_alive(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Closes the port and its connections; answers once they are closed.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Whether a client at `peer` may reach the instance's SSH server.
fn admits(groups: &[GroupRules], peer: IpAddr) -> bool {
    if groups.is_empty() {
        return true;
    }
    let ip = match peer {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => ip,
            None => return false,
        },
    };
    groups
        .iter()
        .flat_map(|g| &g.rules)
        .any(|rule| rule.admits_tcp(ip, 22))
}

async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    groups: Arc<RwLock<Vec<GroupRules>>>,
    places: Arc<RwLock<Arc<Semaphore>>>,
) {
    // Connections live in the set, so that aborting this task ends them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let admitted = admits(&groups.read().unwrap_or_else(|p| p.into_inner()), peer.ip());
                    let permit = match conns.len() < MAX_PER_FORWARD {
                        true => places
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                            .try_acquire_owned()
                            .ok()
                            .and_then(|ours| Some((ours, FORWARDED.clone().try_acquire_owned().ok()?))),
                        false => None,
                    };
                    if admitted && let Some(permit) = permit {
                        conns.spawn(async move {
                            relay(client, target).await;
                            drop(permit);
                        });
                    } else if admitted {
                        tracing::warn!(%target, %peer, "too many forwarded connections; closing a new one");
                    } else {
                        tracing::debug!(%target, %peer, "forwarded connection refused by the instance's security groups");
                    }
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, "accepting a forwarded connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr) {
    let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await;
    let mut upstream = match connect {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "forwarded connection refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%target, "forwarded connection timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // The connection ends when either side is done: an SSH client that
    // goes away leaves nothing held open by an instance that keeps its
    // side open.
    let (mut client_reads, mut client_writes) = client.split();
    let (mut instance_reads, mut instance_writes) = upstream.split();
    tokio::select! {
        _ = tokio::io::copy(&mut client_reads, &mut instance_writes) => {}
        _ = tokio::io::copy(&mut instance_reads, &mut client_writes) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::network::{InboundRule, Ports, Protocol, Source};
    use tokio::io::AsyncReadExt;

    /// An instance's SSH server that takes connections and never lets go:
    /// its address, and the task that holds them.
    async fn holder() -> (SocketAddr, JoinHandle<()>) {
        let holder = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = holder.local_addr().expect("address");
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = holder.accept().await {
                kept.push(stream);
            }
        });
        (target, held)
    }

    fn free_port() -> u16 {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        free.local_addr().expect("address").port()
    }

    /// Whether the forward closed `stream` as it accepted it.
    async fn closed_at_once(mut stream: TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// An instance that takes connections and never lets go holds at most
    /// [`MAX_PER_FORWARD`] of them through its forward; a connection over
    /// that is closed at once, and one that ends makes room.
    #[tokio::test]
    async fn a_forward_relays_a_bounded_number_of_connections() {
        let (target, held) = holder().await;
        let port = free_port();
        let proxy = Proxy::spawn(port, target, Vec::new(), "p-bounded")
            .await
            .expect("forward");
        let mut open = Vec::new();
        for _ in 0..MAX_PER_FORWARD {
            open.push(
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let extra = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert!(closed_at_once(extra).await, "one over the limit");
        drop(open.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert!(!closed_at_once(again).await, "room again");
        proxy.close().await;
        held.abort();
    }

    /// The forwards of one project's instances share its places: with
    /// three, two connections through one forward and one through another
    /// fill them, and a fourth through either is closed at once, while
    /// another project's forward still relays. The places are the
    /// project's while any of its forwards is open.
    #[tokio::test]
    async fn a_projects_forwards_share_a_bound() {
        let (target, held) = holder().await;
        let ours = Arc::new(Semaphore::new(3));
        let theirs = Arc::new(Semaphore::new(3));
        let mut ports = Vec::new();
        let mut forwards = Vec::new();
        for places in [&ours, &ours, &theirs] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().expect("address").port());
            forwards.push(tokio::spawn(serve(
                listener,
                target,
                Arc::default(),
                Arc::new(RwLock::new((*places).clone())),
            )));
        }
        let connect = |port: u16| async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream
        };
        let _open = [
            connect(ports[0]).await,
            connect(ports[0]).await,
            connect(ports[1]).await,
        ];
        assert!(
            closed_at_once(connect(ports[1]).await).await,
            "the project's fourth"
        );
        assert!(
            closed_at_once(connect(ports[0]).await).await,
            "the project's fourth"
        );
        assert!(
            !closed_at_once(connect(ports[2]).await).await,
            "another project's"
        );
        for forward in forwards {
            forward.abort();
        }
        held.abort();

        let first = project_places("p-shared");
        let second = project_places("p-shared");
        assert!(Arc::ptr_eq(&first, &second), "one project, one bound");
        assert!(!Arc::ptr_eq(&first, &project_places("p-other")));
        assert_eq!(first.available_permits(), MAX_PER_PROJECT);
        drop((first, second));
        let again = project_places("p-shared");
        assert_eq!(again.available_permits(), MAX_PER_PROJECT, "made anew");

        // A forward adopted before its project was known takes its
        // project's places once it is.
        let port = free_port();
        let proxy = Proxy::spawn(port, target, Vec::new(), "instance i-1")
            .await
            .expect("forward");
        let places = || proxy.places.read().expect("places").clone();
        assert!(Arc::ptr_eq(&places(), &project_places("instance i-1")));
        proxy.set_project("p-known");
        let known = project_places("p-known");
        assert!(Arc::ptr_eq(&places(), &known));
        proxy.close().await;
    }

    #[test]
    fn clients_are_admitted_by_the_groups_ssh_rules() {
        let from = |ip: &str| ip.parse::<IpAddr>().expect("ip");
        assert!(admits(&[], from("203.0.113.7")), "no groups: the defaults");
        let office = GroupRules {
            id: "sg-1".into(),
            rules: vec![InboundRule {
                protocol: Protocol::Tcp,
                ports: Some(Ports { from: 22, to: 22 }),
                source: Source::Cidr("192.0.2.0/24".into()),
            }],
        };
        let web = GroupRules {
            id: "sg-2".into(),
            rules: vec![InboundRule {
                protocol: Protocol::Tcp,
                ports: Some(Ports { from: 80, to: 443 }),
                source: Source::Cidr("0.0.0.0/0".into()),
            }],
        };
        let groups = [office, web];
        assert!(admits(&groups, from("192.0.2.9")));
        assert!(admits(&groups, from("::ffff:192.0.2.9")));
        assert!(!admits(&groups, from("203.0.113.7")));
        assert!(!admits(&groups, from("2001:db8::1")));
        assert!(!admits(&groups[1..], from("192.0.2.9")), "web only: no SSH");
    }
}
