//! Signals and the service manager: shutdown, graceful upgrade, readiness for systemd.
//!
//! - SIGTERM: a graceful shutdown (every stream gets a randomised `retry:`); a second SIGTERM or
//!   SIGINT during it exits at once.
//! - SIGINT: exits at once.
//! - SIGQUIT, with `[server] upgrade_socket`: a graceful upgrade. pingora hands the listening sockets
//!   to the process started with `--upgrade` that waits on that socket, keeps accepting for 5 s, then
//!   shuts down as on SIGTERM. Without `upgrade_socket`: as SIGTERM.
//! - SIGUSR2, with `[server] upgrade_socket`: an upgrade in place. This process starts the installed
//!   binary with its own arguments plus `--upgrade`, then goes on as on SIGQUIT.
//! - `sd_notify` (no-ops without `NOTIFY_SOCKET`): `READY=1` once every listener accepts; a process
//!   that took the sockets over first says `MAINPID=` its own PID, so systemd follows it.

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch};
use sd_notify::NotifyState;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The exit status after a second signal cut a graceful shutdown short (128 + SIGINT, as shells do).
pub const INTERRUPTED: i32 = 130;

/// How long an upgrade waits for the new process to wait on the upgrade socket: it sets up its
/// brokers first, then asks for the sockets. pingora's sender then retries for about 5 s more.
const NEW_PROCESS_WAIT: Duration = Duration::from_secs(20);

/// Set once a graceful shutdown or an upgrade's drain begins; never cleared.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process is draining (shutting down gracefully, or handing over to a new process):
/// it should get no new clients (`/readyz` answers 503).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Tells systemd (under `Type=notify`) that sluice serves, once pingora has bound or taken over every
/// address in `addresses`: it records each listening socket in `fds` as it opens it, and a process
/// that took the sockets over holds them all from the start.
pub async fn notify_when_listening(fds: ListenFds, addresses: Vec<String>) {
    while !addresses.iter().all(|a| fds.lock().get(a).is_some()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    notify(&[NotifyState::Ready]);
}

/// Tells systemd that this process now holds the listening sockets (after `--upgrade` took them), so
/// it stays the service's main process when the old one exits (the unit needs `NotifyAccess=all`).
pub fn notify_main_pid() {
    notify(&[NotifyState::MainPid(std::process::id())]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// What an upgrade needs: where the new process waits, and how to start one in place.
#[derive(Debug)]
struct Upgrade {
    socket: PathBuf,
    /// The binary as this process was started: after the file at that path is replaced, it starts
    /// the new version (`/proc/self/exe` would still name the replaced one).
    program: Option<PathBuf>,
    /// This process's arguments with `--upgrade` (once).
    args: Vec<OsString>,
}

/// The signals, registered as the process starts.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    quit: Signal,
    user2: Signal,
}

/// Waits for the first shutdown or upgrade signal, and arms the second.
pub struct TwoStepShutdown {
    signals: Mutex<Option<Signals>>,
    upgrade: Option<Upgrade>,
}

impl TwoStepShutdown {
    /// Registers the handlers now (within a tokio runtime): from here on SIGQUIT and SIGUSR2 no longer
    /// end the process by their default action, and one that arrives before pingora waits is kept.
    /// The binary's path is resolved now too, before an upgrade can replace it.
    pub fn new(upgrade_socket: Option<PathBuf>) -> std::io::Result<Self> {
        let signals = Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            user2: signal(SignalKind::user_defined2())?,
        };
        let upgrade = upgrade_socket.map(|socket| Upgrade {
            socket,
            program: started_as().or_else(|| std::env::current_exe().ok()),
            args: upgrade_args(std::env::args_os().skip(1)),
        });
        Ok(Self {
            signals: Mutex::new(Some(signals)),
            upgrade,
        })
    }
}

#[async_trait]
impl ShutdownSignalWatch for TwoStepShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let taken = self.signals.lock().ok().and_then(|mut s| s.take());
        let Some(mut signals) = taken else {
            return std::future::pending().await;
        };
        loop {
            let in_place = tokio::select! {
                stop = stop_signal(&mut signals.terminate, &mut signals.interrupt) => return stop,
                _ = signals.quit.recv() => false,
                _ = signals.user2.recv() => true,
            };
            let name = if in_place { "SIGUSR2" } else { "SIGQUIT" };
            let Some(upgrade) = &self.upgrade else {
                if in_place {
                    tracing::error!(
                        "SIGUSR2: no [server] upgrade_socket to upgrade through: still serving"
                    );
                    continue;
                }
                drain(
                    "SIGQUIT without [server] upgrade_socket: shutting down as on SIGTERM",
                    true,
                );
                return ShutdownSignal::GracefulTerminate;
            };
            // SIGTERM and SIGINT still apply while the new process gets ready.
            let prepared = tokio::select! {
                stop = stop_signal(&mut signals.terminate, &mut signals.interrupt) => return stop,
                prepared = upgrade.prepare(in_place) => prepared,
            };
            match prepared {
                Ok(()) => {
                    drain(
                        &format!(
                            "{name}: handing the listening sockets over on {}; closing every stream \
                             in 5s; a second SIGTERM or SIGINT exits at once",
                            upgrade.socket.display()
                        ),
                        false,
                    );
                    return ShutdownSignal::GracefulUpgrade;
                }
                Err(e) => tracing::error!("{name}: no upgrade, still serving: {e}"),
            }
        }
    }
}

/// Waits for SIGTERM (a graceful shutdown) or SIGINT (at once).
async fn stop_signal(terminate: &mut Signal, interrupt: &mut Signal) -> ShutdownSignal {
    tokio::select! {
        _ = terminate.recv() => {
            drain("SIGTERM: closing every stream; a second signal exits at once", true);
            ShutdownSignal::GracefulTerminate
        }
        _ = interrupt.recv() => ShutdownSignal::FastShutdown,
    }
}

/// Marks the process draining, logs why, tells systemd when the service stops (not when a new process
/// takes over), and arms the second signal.
fn drain(why: &str, stopping: bool) {
    DRAINING.store(true, Ordering::Relaxed);
    tracing::info!("{why}");
    if stopping {
        notify(&[NotifyState::Stopping]);
    }
    arm_second_signal();
}

impl Upgrade {
    /// Gets a new process waiting for the sockets: started here (`in_place`), or by the operator.
    async fn prepare(&self, in_place: bool) -> Result<(), String> {
        if !in_place {
            return self.new_process_waits(&mut None).await;
        }
        let program = self
            .program
            .as_ref()
            .ok_or("the path this binary was started as is unknown")?;
        // A socket file left by a new process that died would pass for a live one.
        if is_socket(&self.socket) {
            let _ = std::fs::remove_file(&self.socket);
        }
        let child = Command::new(program)
            .args(&self.args)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let pid = child.id();
        tracing::info!("SIGUSR2: started {} (pid {pid})", program.display());
        // Until it waits on the socket, the new process is ended if the upgrade is abandoned (an
        // error, or SIGTERM dropping this future): it holds nothing yet.
        let mut candidate = Candidate(Some(child));
        self.new_process_waits(&mut candidate.0)
            .await
            .map_err(|e| format!("{} (pid {pid}): {e}", program.display()))?;
        candidate.0 = None;
        Ok(())
    }

    /// Waits until a new process listens on the upgrade socket: pingora's sender needs one within
    /// about 5 s, or it shuts down with no successor. Fails at once if `child` exits.
    async fn new_process_waits(&self, child: &mut Option<Child>) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if is_socket(&self.socket) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                return Err(format!("the new process exited ({status})"));
            }
            if start.elapsed() > NEW_PROCESS_WAIT {
                return Err(format!(
                    "no new process waited on {} within {NEW_PROCESS_WAIT:?}: start one with \
                     `sluice --config PATH --upgrade`, then send SIGQUIT",
                    self.socket.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A new process that has not asked for the sockets yet: killed (by its PID) when dropped.
struct Candidate(Option<Child>);

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The absolute path of the binary as it was started (`argv[0]`, searched in `PATH` as the shell did
/// when it holds no `/`), symlinks kept: a symlink switched to a new version starts that version.
fn started_as() -> Option<PathBuf> {
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    if argv0.as_os_str().as_bytes().contains(&b'/') {
        return Some(std::env::current_dir().ok()?.join(argv0));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(&argv0))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::path::absolute(found).ok())
}

/// The arguments for the new process: this one's, with `--upgrade` once.
fn upgrade_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let upgrade = [OsStr::new("--upgrade"), OsStr::new("-u")];
    let mut kept: Vec<OsString> = args.filter(|a| !upgrade.contains(&a.as_os_str())).collect();
    kept.push("--upgrade".into());
    kept
}

/// Exits the process on the next SIGTERM or SIGINT. The listener runs on a thread of its own, since
/// pingora blocks its main runtime while it drains; it is registered before this returns.
fn arm_second_signal() {
    let (armed, wait_armed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let (Ok(mut terminate), Ok(mut interrupt)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                let _ = armed.send(());
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                tracing::warn!("second signal: exiting without waiting for streams to close");
                std::process::exit(INTERRUPTED);
            });
        });
    if spawned.is_ok() {
        let _ = wait_armed.recv();
    }
}

#[cfg(test)]
mod tests {
    use super::upgrade_args;
    use std::ffi::OsString;

    #[test]
    fn the_new_process_gets_the_same_arguments_and_upgrade_once() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            upgrade_args(args(&["--config", "/etc/sluice/config.toml"]).into_iter()),
            args(&["--config", "/etc/sluice/config.toml", "--upgrade"])
        );
        assert_eq!(
            upgrade_args(args(&["-c", "c.toml", "--upgrade"]).into_iter()),
            args(&["-c", "c.toml", "--upgrade"])
        );
        assert_eq!(
            upgrade_args(args(&["-u", "--config=c.toml"]).into_iter()),
            args(&["--config=c.toml", "--upgrade"])
        );
    }
}
