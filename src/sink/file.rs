//! NDJSON appended to a file: flushed to the kernel after every batch, synced (`fsync`) as the
//! drain's [`crate::config::FsyncMode`] asks.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{encode_batch, Sink, SinkError, SinkFuture};
use crate::record::Record;

/// Appends records to a file.
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
    /// A second handle on the same open file, so `fsync` can run while writing goes on.
    sync_handle: Arc<std::fs::File>,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    ///
    /// A file whose last line was cut short (a crash in the middle of a write) gets a newline
    /// first, so the torn line stays one line of its own and the next record is whole. Its items
    /// were never acknowledged: their clients send them again.
    pub async fn open(path: &Path) -> Result<FileSink, SinkError> {
        let owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_for_append(&owned))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        let io_error = |source| SinkError::Io {
            sink: format!("file:{}", path.display()),
            source,
        };
        let file = opened.map_err(io_error)?;
        let sync_handle = Arc::new(file.try_clone().map_err(io_error)?);
        Ok(FileSink {
            path: path.to_owned(),
            file: tokio::fs::File::from_std(file),
            sync_handle,
        })
    }

    fn io_error(&self) -> impl FnOnce(io::Error) -> SinkError + '_ {
        |source| SinkError::Io {
            sink: self.name(),
            source,
        }
    }
}

fn open_for_append(path: &Path) -> io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    if len > 0 {
        file.seek(SeekFrom::End(-1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            tracing::warn!(path = %path.display(), "the file ends with a partial line (an interrupted write); starting the next record on a new line");
            io::Write::write_all(&mut file, b"\n")?;
        }
    }
    Ok(file)
}

impl Sink for FileSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            let buf = encode_batch(batch);
            if let Err(error) = self.file.write_all(&buf).await {
                return Err(self.io_error()(error));
            }
            // tokio's File writes on a blocking thread; flush waits until the kernel has it all.
            if let Err(error) = self.file.flush().await {
                return Err(self.io_error()(error));
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> Option<SinkFuture<'static>> {
        let handle = Arc::clone(&self.sync_handle);
        let sink = self.name();
        Some(Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.sync_data())
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| SinkError::Io { sink, source })
        }))
    }

    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }
}
