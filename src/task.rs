//! Blocking work (mounts, fsyncs, forks, directory walks) run off the
//! async threads, with the one error every caller maps: the worker died.

/// The blocking task panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("internal task failed: {0}")]
pub struct TaskFailed(pub String);

/// Runs `work` on tokio's blocking pool and returns its result; a worker
/// that panicked becomes `E::from(TaskFailed)`.
pub async fn blocking<T, E, F>(work: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(E::from(TaskFailed(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error(transparent)]
        Task(#[from] TaskFailed),
        #[error("work failed")]
        Work,
    }

    #[tokio::test]
    async fn results_and_panics_come_back() {
        assert_eq!(blocking(|| Ok::<_, E>(7)).await.unwrap(), 7);
        assert!(matches!(
            blocking(|| Err::<(), _>(E::Work)).await,
            Err(E::Work)
        ));
        let panicked = blocking(|| -> Result<(), E> { panic!("boom") }).await;
        assert!(matches!(panicked, Err(E::Task(TaskFailed(m))) if m.contains("panic")));
    }
}
