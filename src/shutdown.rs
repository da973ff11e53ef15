//! Signals: SIGTERM shuts down gracefully (every stream gets a randomised `retry:`), SIGINT at once,
//! and a second SIGTERM or SIGINT during a graceful shutdown exits at once.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// The exit status after a second signal cut a graceful shutdown short (128 + SIGINT, as shells do).
pub const INTERRUPTED: i32 = 130;

/// Waits for the first shutdown signal, and arms the second.
pub struct TwoStepShutdown;

#[async_trait]
impl ShutdownSignalWatch for TwoStepShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM and SIGINT: stop sluice with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("SIGTERM: closing every stream; a second signal exits at once");
        arm_second_signal();
        ShutdownSignal::GracefulTerminate
    }
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
