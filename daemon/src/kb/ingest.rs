//! One document from bytes to committed chunks: parse (isolated for risky formats) → chunk
//! (bounded by the embedding model's token limit) → [`KnowledgeBase::ingest_chunks`] (embed,
//! then one write transaction). Shared by the HTTP API and the admin socket.

use sha2::{Digest, Sha256};

use super::base::{DocInfo, KbError, KnowledgeBase, NewDocument};
use super::chunk::{chunk, ChunkOptions};
use super::parse::{parse, ParseError, ParseOptions};
use super::DocKind;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("document too large: {size} bytes > {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the document has no text to index")]
    NoChunks,
    #[error(transparent)]
    Kb(#[from] KbError),
}

/// The knowledge base plus the settings ingestion needs.
pub struct Ingestor {
    base: KnowledgeBase,
    parse: ParseOptions,
    chunk: ChunkOptions,
}

impl Ingestor {
    pub fn new(base: KnowledgeBase, parse: ParseOptions, chunk: ChunkOptions) -> Ingestor {
        Ingestor { base, parse, chunk }
    }

    pub fn base(&self) -> &KnowledgeBase {
        &self.base
    }

    /// Largest document accepted, bytes.
    pub fn max_document_bytes(&self) -> usize {
        usize::try_from(self.parse.max_input_bytes).unwrap_or(usize::MAX)
    }

    /// Parse, chunk, embed and store `bytes` as `filename` in `collection`; returns the stored
    /// document and whether it replaced an earlier version. Blocking.
    pub fn ingest(
        &self,
        collection: &str,
        filename: &str,
        kind: DocKind,
        bytes: &[u8],
    ) -> Result<(DocInfo, bool), IngestError> {
        let limit = self.max_document_bytes();
        if bytes.len() > limit {
            return Err(IngestError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        // A missing collection fails before seconds of parsing and embedding.
        self.base.collection(collection)?;
        let parsed = parse(bytes, kind, &self.parse)?;
        let embed = self.base.embedder().clone();
        let count = |t: &str| embed.count_tokens(t);
        let chunks = chunk(&parsed, &count, &self.chunk);
        if chunks.is_empty() {
            return Err(IngestError::NoChunks);
        }
        let doc = NewDocument {
            filename: filename.to_string(),
            kind,
            title: parsed.title.clone(),
            sha256: hex(&Sha256::digest(bytes)),
            size_bytes: bytes.len() as u64,
            pages: parsed.pages,
        };
        let replaced = self
            .base
            .list_documents(collection)?
            .iter()
            .any(|d| d.filename == filename);
        let info = self.base.ingest_chunks(collection, doc, chunks)?;
        Ok((info, replaced))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
