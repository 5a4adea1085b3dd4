//! Sessions into instances as this host makes them: the contract's
//! [`Session`] (input, output and a [`SessionControl`]), over plain pipes or
//! over a pseudo-terminal the agent allocates on the host ([`Pty`]).
//!
//! Each driver brings its own [`SessionControl`] (the container driver's
//! for a `runc exec` process, the simulated host's for its pretend shell);
//! what they share is here. The design decision: with a terminal, the agent
//! keeps the pty's master (the session's input and output) and hands its
//! slave to the driver's process as standard input, output and error; how
//! the process in the instance gets a terminal of its own is the driver's
//! business (the container driver's `runc exec -t` makes one inside the
//! container, copies between the two, and makes it the process's
//! controlling terminal). The output ends when the last slave is closed
//! (Linux answers EIO there, read here as the end of file), and closing the
//! input of a terminal types the end-of-file character (`^D`), since a
//! terminal cannot be half closed.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll, ready};
use tessera_agent_api::AgentError;
pub use tessera_agent_api::{Session, SessionControl, SessionRequest, TtySize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The end-of-file character of a terminal in canonical mode (`VEOF`).
const END_OF_FILE: u8 = 0x04;

/// The exit code of a process on the host: its code, or 128 + N when
/// signal N ended it, as a shell says.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

fn pty_fail(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("allocating a pseudo-terminal: {what}: {e}"))
}

/// The window size of a terminal, as the kernel keeps it.
pub(crate) fn winsize(size: TtySize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A pseudo-terminal pair on the host, sized, before its slave goes to a
/// process.
pub struct Pty {
    /// What the process writes to its terminal.
    pub output: PtyReader,
    /// What the process reads from its terminal (typed keys).
    pub input: PtyWriter,
    /// The terminal's window size.
    pub master: PtyMaster,
    /// The terminal side: give it (or copies of it) to the process, then
    /// drop it, so that the output ends when the process does.
    pub slave: OwnedFd,
}

impl Pty {
    /// Allocates a pair (`/dev/ptmx`) of `size`; needs a tokio runtime.
    pub fn open(size: TtySize) -> Result<Pty, AgentError> {
        use rustix::pty::OpenptFlags;
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).map_err(|e| pty_fail("opening /dev/ptmx", e))?;
        rustix::pty::grantpt(&master).map_err(|e| pty_fail("grantpt", e))?;
        rustix::pty::unlockpt(&master).map_err(|e| pty_fail("unlockpt", e))?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| pty_fail("ptsname", e))?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| pty_fail(&format!("opening {}", name.to_string_lossy()), e))?;
        rustix::termios::tcsetwinsize(&master, winsize(size))
            .map_err(|e| pty_fail("setting the window size", e))?;
        // Shared by every copy of the master (one open file).
        rustix::io::ioctl_fionbio(&master, true)
            .map_err(|e| pty_fail("making the master non-blocking", e))?;
        let copy = |e: io::Error| pty_fail("copying the master", e);
        // tokio polls any pollable descriptor as a pipe's end; a pty's
        // master reads and writes as one.
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(
            master.try_clone().map_err(copy)?,
        )
        .map_err(|e| pty_fail("polling the master", e))?;
        let input = master.try_clone().map_err(copy)?;
        Ok(Pty {
            output: PtyReader(output),
            input: PtyWriter {
                master: input,
                closed: false,
                backoff: None,
            },
            master: PtyMaster(master),
            slave,
        })
    }
}

/// The agent's side of a pseudo-terminal, for its window size.
pub struct PtyMaster(OwnedFd);

impl PtyMaster {
    /// Sets the terminal's window size (the kernel tells the terminal's
    /// foreground processes with SIGWINCH).
    pub fn resize(&self, size: TtySize) -> Result<(), AgentError> {
        rustix::termios::tcsetwinsize(&self.0, winsize(size))
            .map_err(|e| AgentError::Failed(format!("resizing the session's terminal: {e}")))
    }
}

/// The output of a terminal; EIO (no slave open any more) is its end.
pub struct PtyReader(tokio::net::unix::pipe::Receiver);

impl AsyncRead for PtyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_read(cx, buf)) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(other),
        }
    }
}

/// How long a write to a full terminal waits before it tries again.
const FULL_TERMINAL_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// The input of a terminal; shutting it down (or dropping it) types `^D`.
///
/// The design decision: it writes the master itself (non-blocking) and,
/// when the terminal's input buffer is full (a process that does not read,
/// a line longer than the buffer), waits [`FULL_TERMINAL_RETRY`] before it
/// tries again. Polling the master for writability is no help there: Linux
/// reports a pty master writable while its line discipline refuses the
/// bytes, which made a reactor retry without pause and spin its threads.
pub struct PtyWriter {
    master: OwnedFd,
    closed: bool,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the session's input is closed",
            )));
        }
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match rustix::io::write(&self.master, data) {
                Ok(written) => return Poll::Ready(Ok(written)),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    self.backoff = Some(Box::pin(tokio::time::sleep(FULL_TERMINAL_RETRY)));
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        // Written, or nobody reads the terminal any more: closed either way.
        let _ = ready!(self.as_mut().poll_write(cx, &[END_OF_FILE]));
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for PtyWriter {
    fn drop(&mut self) {
        if !self.closed {
            // Best effort: a full terminal buffer or a gone process loses it.
            let _ = rustix::io::write(&self.master, &[END_OF_FILE]);
        }
        // A ^D typed while the process is still setting its terminal's
        // modes (a shell starting its line editor) can be lost with the
        // switch: type it again a few times, until the terminal is gone.
        // Closed input is the end of everything that reads it.
        let (Ok(runtime), Ok(master)) = (
            tokio::runtime::Handle::try_current(),
            self.master.try_clone(),
        ) else {
            return;
        };
        runtime.spawn(async move {
            for wait in [250, 500, 1000, 2000, 4000] {
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                if rustix::io::write(&master, &[END_OF_FILE]).is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use tokio::io::AsyncWriteExt;

    /// Input larger than the terminal holds waits while nothing reads it
    /// and goes through once something does (the retry path).
    #[tokio::test]
    async fn input_to_a_full_terminal_waits_then_goes_through() {
        let pty = Pty::open(TtySize { cols: 80, rows: 24 }).expect("pty");
        let Pty {
            output: _output,
            mut input,
            master: _master,
            slave,
        } = pty;
        // Raw mode on the slave, so the bytes arrive as written.
        let mut termios = rustix::termios::tcgetattr(&slave).expect("termios");
        termios.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)
            .expect("raw");
        let data = vec![b'x'; 256 * 1024];
        let writing = tokio::spawn(async move { input.write_all(&data).await.map(|()| input) });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!writing.is_finished(), "the terminal cannot hold it all");
        let reader = std::thread::spawn(move || {
            let mut slave = std::fs::File::from(slave);
            let mut got = vec![0u8; 256 * 1024];
            slave.read_exact(&mut got).map(|()| got)
        });
        let _input = writing.await.expect("join").expect("written");
        let got = reader.join().expect("reader").expect("read");
        assert!(got.iter().all(|b| *b == b'x'));
    }
}
