//! Host ports forwarded to instances: a userspace TCP proxy per instance.
//!
//! A forward is a task that owns its listener and its connections, so
//! ending the task closes the port and every connection through it;
//! [`Proxy::close`] waits until it has.

use super::fail;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_agent_api::AgentError;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A running forward; dropping it closes the port and its connections
/// (soon after: [`Proxy::close`] to know when).
pub(super) struct Proxy {
    pub port: u16,
    pub target: SocketAddr,
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
    /// Listens on `0.0.0.0:port` and forwards every connection to `target`.
    /// A port still held (by a proxy being torn down) is retried a while.
    pub async fn spawn(port: u16, target: SocketAddr) -> Result<Proxy, AgentError> {
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
        let task = tokio::spawn(serve(listener, target));
        Ok(Proxy {
            port,
            target,
            task: Some(task),
        })
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

async fn serve(listener: TcpListener, target: SocketAddr) {
    // Connections live in the set, so that aborting this task ends them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(relay(client, target));
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
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
