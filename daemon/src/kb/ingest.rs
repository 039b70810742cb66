//! One document from bytes to committed chunks: spool file → parse (in a worker process with
//! resource limits, for every format) → chunk (linear time, with a deadline) →
//! [`KnowledgeBase::ingest_chunks`] (embed, then one write transaction). Shared by the HTTP
//! API and the admin socket.
//!
//! At most `max_concurrent` documents are ingested at once; a further one waits up to `wait`
//! for a slot and is then refused with [`IngestError::Busy`]. A slot is taken before the
//! upload is spooled, so it also bounds the disk the spool uses. An HTTP upload runs on a
//! thread of its own ([`Ingestor::begin`]), not on the runtime's shared blocking pool that
//! the admin socket and key revocation need.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::base::{DocInfo, KbError, KnowledgeBase, NewDocument};
use super::chunk::{chunk_until, ChunkOptions};
use super::parse::{parse_file, ParseError, ParseOptions};
use super::spool::{Spool, SpoolFile};
use super::DocKind;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("document too large: {size} bytes > {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the document has no text to index")]
    NoChunks,
    #[error("splitting the document into chunks took more than {0} s")]
    ChunkTimeout(u64),
    #[error(
        "the knowledge base is busy: {running} documents are being ingested and none \
         finished within {waited} s; retry later"
    )]
    Busy { running: usize, waited: u64 },
    #[error("upload spool: {0}")]
    Spool(String),
    /// The spool's file system is full (HTTP 507).
    #[error("upload spool: the disk is full ({0}); free space in the state directory")]
    DiskFull(String),
    #[error("the upload ended before the document was complete")]
    Aborted,
    #[error(transparent)]
    Kb(#[from] KbError),
}

/// Limits of ingestion (config section `[kb]`).
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Documents parsed, chunked and embedded at once.
    pub max_concurrent: usize,
    /// How long a further document waits for a slot before it is refused.
    pub wait: Duration,
    /// Longest time chunking one document may take.
    pub chunk_timeout: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_concurrent: 2,
            wait: Duration::from_secs(30),
            chunk_timeout: Duration::from_secs(300),
        }
    }
}

/// A slot to ingest one document; released when dropped.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// The knowledge base plus the settings ingestion needs.
pub struct Ingestor {
    base: KnowledgeBase,
    parse: ParseOptions,
    chunk: ChunkOptions,
    limits: IngestLimits,
    slots: Arc<Semaphore>,
    spool: Spool,
}

impl Ingestor {
    pub fn new(
        base: KnowledgeBase,
        parse: ParseOptions,
        chunk: ChunkOptions,
        limits: IngestLimits,
        spool: Spool,
    ) -> Ingestor {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Ingestor {
            base,
            parse,
            chunk,
            limits,
            slots,
            spool,
        }
    }

    pub fn base(&self) -> &KnowledgeBase {
        &self.base
    }

    /// Largest document accepted, bytes.
    pub fn max_document_bytes(&self) -> usize {
        usize::try_from(self.parse.max_input_bytes).unwrap_or(usize::MAX)
    }

    fn busy(&self) -> IngestError {
        IngestError::Busy {
            running: self.limits.max_concurrent.max(1),
            waited: self.limits.wait.as_secs(),
        }
    }

    /// Wait (up to the limit) for a slot to ingest one document.
    pub async fn admit(&self) -> Result<Slot, IngestError> {
        match tokio::time::timeout(self.limits.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Slot(p)),
            _ => Err(self.busy()),
        }
    }

    /// [`Ingestor::admit`] for a blocking caller.
    pub fn admit_blocking(&self) -> Result<Slot, IngestError> {
        let until = Instant::now() + self.limits.wait;
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Ok(Slot(p));
            }
            if Instant::now() >= until {
                return Err(self.busy());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Parse, chunk, embed and store `bytes` as `filename` in `collection`; returns the stored
    /// document and whether it replaced an earlier version. Blocking (the admin socket's
    /// path: its request already holds the document).
    pub fn ingest(
        &self,
        collection: &str,
        filename: &str,
        kind: DocKind,
        bytes: &[u8],
    ) -> Result<(DocInfo, bool), IngestError> {
        self.check_size(bytes.len() as u64)?;
        let _slot = self.admit_blocking()?;
        let mut file = self.spool_file()?;
        file.write(bytes)
            .and_then(|()| file.finish())
            .map_err(spool_error)?;
        self.ingest_file(collection, filename, kind, file.path())
    }

    /// Start ingesting a document that arrives in pieces (an HTTP upload): a thread of its
    /// own spools the pieces sent to the returned [`Upload`], then ingests the file.
    pub fn begin(
        self: &Arc<Self>,
        slot: Slot,
        collection: String,
        filename: String,
        kind: DocKind,
    ) -> Result<Upload, IngestError> {
        let file = self.spool_file()?;
        let (tx, rx) = mpsc::channel::<Piece>(8);
        let (done_tx, done_rx) = oneshot::channel();
        let me = self.clone();
        std::thread::Builder::new()
            .name("kb-ingest".into())
            .spawn(move || {
                let r = me.spool_then_ingest(file, rx, &collection, &filename, kind);
                drop(slot);
                let _ = done_tx.send(r);
            })
            .map_err(|e| IngestError::Spool(format!("cannot start the ingest thread: {e}")))?;
        Ok(Upload { tx, done: done_rx })
    }

    fn spool_file(&self) -> Result<SpoolFile, IngestError> {
        self.spool.create().map_err(|e| match spool_error(e) {
            IngestError::Spool(m) => IngestError::Spool(format!(
                "cannot create a file in {}: {m}",
                self.spool.dir().display()
            )),
            full => full,
        })
    }

    fn check_size(&self, size: u64) -> Result<(), IngestError> {
        let limit = self.parse.max_input_bytes;
        if size > limit {
            return Err(IngestError::TooLarge { size, limit });
        }
        Ok(())
    }

    fn spool_then_ingest(
        &self,
        mut file: SpoolFile,
        mut rx: mpsc::Receiver<Piece>,
        collection: &str,
        filename: &str,
        kind: DocKind,
    ) -> Result<(DocInfo, bool), IngestError> {
        loop {
            match rx.blocking_recv() {
                Some(Piece::Data(d)) => {
                    self.check_size(file.len() + d.len() as u64)?;
                    file.write(&d).map_err(spool_error)?;
                }
                Some(Piece::End) => break,
                // The request went away (or was refused) before its end.
                None => return Err(IngestError::Aborted),
            }
        }
        file.finish().map_err(spool_error)?;
        self.ingest_file(collection, filename, kind, file.path())
    }

    /// Ingest the document in `path` (see the module docs). Blocking.
    fn ingest_file(
        &self,
        collection: &str,
        filename: &str,
        kind: DocKind,
        path: &Path,
    ) -> Result<(DocInfo, bool), IngestError> {
        super::valid_filename(filename).map_err(|m| KbError::Invalid(format!("filename {m}")))?;
        // A missing collection fails before seconds of parsing and embedding.
        self.base.collection(collection)?;
        let (size, sha256) = digest(path).map_err(spool_error)?;
        self.check_size(size)?;
        let t0 = Instant::now();
        let parsed = parse_file(path, kind, &self.parse)?;
        let t1 = Instant::now();
        tracing::debug!(
            blocks = parsed.blocks.len(),
            parse_s = (t1 - t0).as_secs_f64(),
            "document parsed"
        );
        let embed = self.base.embedder().clone();
        let count = |t: &str| embed.count_tokens(t);
        let deadline = t1 + self.limits.chunk_timeout;
        let chunks = chunk_until(&parsed, &count, &self.chunk, deadline)
            .map_err(|_| IngestError::ChunkTimeout(self.limits.chunk_timeout.as_secs()))?;
        let t2 = Instant::now();
        let n_chunks = chunks.len();
        tracing::debug!(
            chunks = n_chunks,
            chunk_s = (t2 - t1).as_secs_f64(),
            "document chunked"
        );
        if chunks.is_empty() {
            return Err(IngestError::NoChunks);
        }
        let doc = NewDocument {
            filename: filename.to_string(),
            kind,
            title: parsed.title.clone(),
            sha256,
            size_bytes: size,
            pages: parsed.pages,
        };
        drop(parsed);
        let replaced = self
            .base
            .list_documents(collection)?
            .iter()
            .any(|d| d.doc.filename == filename);
        let info = self.base.ingest_chunks(collection, doc, chunks)?;
        tracing::info!(
            collection,
            bytes = size,
            chunks = n_chunks,
            parse_s = (t1 - t0).as_secs_f64(),
            chunk_s = (t2 - t1).as_secs_f64(),
            embed_store_s = t2.elapsed().as_secs_f64(),
            "document ingested"
        );
        Ok((info, replaced))
    }
}

/// A piece of an upload, or its end.
enum Piece {
    Data(Bytes),
    End,
}

/// An upload in progress (see [`Ingestor::begin`]). Dropping it before [`Upload::finish`]
/// abandons the document and removes its spool file.
pub struct Upload {
    tx: mpsc::Sender<Piece>,
    done: oneshot::Receiver<Result<(DocInfo, bool), IngestError>>,
}

impl Upload {
    /// Spool the next piece; waits while the thread is behind (backpressure to the client).
    /// `false`: the ingest has already failed; [`Upload::finish`] says why.
    pub async fn write(&self, data: Bytes) -> bool {
        self.tx.send(Piece::Data(data)).await.is_ok()
    }

    /// Mark the end of the document and wait until it is stored (or has failed).
    pub async fn finish(self) -> Result<(DocInfo, bool), IngestError> {
        let _ = self.tx.send(Piece::End).await;
        self.done.await.unwrap_or(Err(IngestError::Aborted))
    }
}

/// Size and SHA-256 of a file, read in pieces.
fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A spool I/O error; a full disk is its own variant (HTTP 507).
fn spool_error(e: std::io::Error) -> IngestError {
    if crate::store::is_disk_full(&e) {
        IngestError::DiskFull(e.to_string())
    } else {
        IngestError::Spool(e.to_string())
    }
}
