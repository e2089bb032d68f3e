//! The signals that stop a command: SIGINT and SIGTERM (Ctrl-C off Unix).

/// A future that resolves on SIGINT or SIGTERM (Ctrl-C elsewhere). The handlers are installed
/// when it is made: `serve` makes it before listening, so a signal that arrives once clients can
/// connect always leads to an orderly shutdown rather than the default "terminate at once".
pub(super) fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
