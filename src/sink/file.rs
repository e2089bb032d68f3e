//! NDJSON appended to a file, flushed to the kernel after every batch.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{encode_batch, Sink, SinkError, SinkFuture};
use crate::record::Record;

/// Appends records to a file.
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    pub async fn open(path: &Path) -> Result<FileSink, SinkError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| SinkError::Io {
                sink: format!("file:{}", path.display()),
                source,
            })?;
        Ok(FileSink {
            path: path.to_owned(),
            file,
        })
    }
}

impl Sink for FileSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            let buf = encode_batch(batch);
            let io = |source| SinkError::Io {
                sink: format!("file:{}", self.path.display()),
                source,
            };
            self.file.write_all(&buf).await.map_err(io)?;
            self.file.flush().await.map_err(io)
        })
    }

    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }
}
