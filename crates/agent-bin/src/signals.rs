//! Waiting for the signal that stops the agent, and the run-until-signal shape both agent
//! flavors share.

use std::future::Future;

use anyhow::Context as _;

/// Says what was left after a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks still running when `stop` gave up waiting (0 when everything ended).
    pub tasks_left: usize,
}

/// Runs what `start` started until SIGTERM or SIGINT, then stops it with `stop`.
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

/// Returns on SIGTERM or SIGINT.
pub async fn wait() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}
