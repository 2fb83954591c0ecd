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
