//! Waits for the signal that stops the agent. Both the full agent ([`crate::run`]) and the light
//! agent ([`crate::light`]) run through [`run_until_signal`], so they start and stop the same way.

use std::future::Future;

use anyhow::Context as _;

/// What remained after an agent was stopped: the result of `RunningAgent::stop` and
/// `RunningLight::stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// How many tasks were still running when `stop` stopped waiting for them; 0 when every task
    /// ended in time.
    pub tasks_left: usize,
}

/// Starts an agent with `start`, waits for SIGTERM or SIGINT, then stops the agent with `stop`.
///
/// Logs how many tasks `stop` reports as left.
///
/// # Errors
///
/// Returns the error of `start`, or the error of setting up the SIGTERM handler (see [`wait`]).
/// `stop` cannot fail.
pub async fn run_until_signal<A, S, F>(start: S, stop: impl FnOnce(A) -> F) -> anyhow::Result<()>
where
    S: Future<Output = anyhow::Result<A>>,
    F: Future<Output = Stopped>,
{
    let agent = start.await?;
    wait().await?;
    let stopped = stop(agent).await;
    tracing::info!(tasks_left = stopped.tasks_left, "stopped");
    Ok(())
}

/// Waits until the process receives SIGTERM or SIGINT, and logs which one came.
///
/// # Errors
///
/// Returns an error when the SIGTERM handler cannot be set up. If the SIGINT handler cannot be
/// set up, this returns `Ok` at once, as if SIGINT had come.
pub async fn wait() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

/// How long `stop` waits for an agent's tasks after cancelling them.
pub(crate) const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Holds what both agent flavors need to hand the CLI its credentials and to stop.
///
/// The full agent and the light agent each keep one: the TLS API's token and certificate, which
/// [`Controls::api`] gives the CLI, and the cancellation token and task tracker that
/// [`Controls::stop`] fires and waits on.
#[derive(Debug)]
pub(crate) struct Controls {
    /// The bearer token clients must send.
    pub(crate) token: std::sync::Arc<str>,
    /// The IPC certificate in PEM, as read at start.
    pub(crate) cert_pem: std::sync::Arc<str>,
    /// Cancelled by `stop`: every server and stream of the agent ends when it is.
    pub(crate) cancel: wm_core::CancellationToken,
    /// Every task the agent spawned, so that `stop` can wait for them.
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

impl Controls {
    /// Returns what the CLI needs to query the TLS API on `port`.
    pub(crate) fn api(&self, port: u16) -> crate::cli::Api {
        crate::cli::Api::tls(port, Some(self.token.to_string()), self.cert_pem.to_string())
    }

    /// Cancels every task, then waits at most [`STOP_WAIT`] for them and for `also` (the store's
    /// own shutdown, for a full agent).
    ///
    /// Returns how many of the agent's tasks were still running, plus `others_left()` (read after
    /// the wait), and logs a warning when that is not zero.
    pub(crate) async fn stop(&self, also: impl Future<Output = ()>, others_left: impl FnOnce() -> usize) -> Stopped {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(STOP_WAIT, async {
            also.await;
            self.tasks.wait().await;
        })
        .await;
        let tasks_left = self.tasks.len() + others_left();
        if tasks_left > 0 {
            tracing::warn!(tasks_left, "some tasks did not end within {STOP_WAIT:?}");
        }
        Stopped { tasks_left }
    }
}
