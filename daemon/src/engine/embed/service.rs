//! The [`Embedder`] service: one worker thread owns the model and batches the jobs
//! waiting in its bounded queue (see the module doc of [`super`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokenizers::{Tokenizer, TruncationParams};

use crate::engine::ort_env::{self, Provider, ProviderOptions};
use crate::kb::{Embed, Script};
use crate::util::{lock, sha256_file};

use super::*;

/// What to do with an input longer than the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the first tokens (the KB chunker already keeps chunks under the limit).
    Truncate,
    /// Fail with [`EmbedError::TooLong`] naming the input (the API does this).
    Reject,
}

/// Options of one [`Embedder::embed_with`] call.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    pub overflow: Overflow,
    /// Wait for room when the queue is full (blocking callers), or fail at once with
    /// [`EmbedError::QueueFull`] (the API, which answers 429).
    pub wait: bool,
    /// Set to skip the inputs not yet embedded (a client that went away).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for EmbedRequest {
    fn default() -> Self {
        EmbedRequest {
            overflow: Overflow::Truncate,
            wait: true,
            cancel: None,
        }
    }
}

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// One unit-length vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read, `[CLS]`/`[SEP]` included.
    pub tokens: usize,
}

/// Settings of the service (config `[embeddings]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedderConfig {
    /// Inputs per ONNX Runtime call.
    pub batch_size: usize,
    /// Intra-op threads of the session; 0 lets ONNX Runtime decide (one per core).
    pub threads: usize,
    /// Requests waiting for the worker; more fail with [`EmbedError::QueueFull`] (or wait,
    /// see [`EmbedRequest::wait`]).
    pub max_queue: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            batch_size: 32,
            threads: 0,
            max_queue: 64,
        }
    }
}

/// Counters of the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedStats {
    pub queued: usize,
    pub inputs: u64,
    pub tokens: u64,
    pub batches: u64,
}

pub(super) struct Job {
    pub(super) rows: Vec<Tokens>,
    pub(super) cancel: Option<Arc<AtomicBool>>,
    pub(super) reply: SyncSender<Result<Vec<Vec<f32>>, EmbedError>>,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
pub(super) struct Counters {
    queued: AtomicUsize,
    inputs: AtomicU64,
    tokens: AtomicU64,
    batches: AtomicU64,
}

pub(super) struct Shared {
    spec: EmbedSpec,
    model_id: String,
    provider: Provider,
    cfg: EmbedderConfig,
    /// Truncates to the model's limit; no padding.
    tokenizer: Tokenizer,
    /// No truncation, no padding: for counting and for rejecting long inputs.
    counter: Tokenizer,
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Embedder::shutdown`]: the worker fails what is left instead of running it.
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// The embedding service: cheap to clone and share between threads.
#[derive(Clone)]
pub struct Embedder {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.shared.model_id)
            .field("provider", &self.shared.provider)
            .finish()
    }
}

pub(super) fn load_tokenizers(spec: &EmbedSpec) -> Result<(Tokenizer, Tokenizer), EmbedError> {
    let file = &spec.tokenizer;
    let mut counter =
        Tokenizer::from_file(file).map_err(|e| invalid(file, format!("cannot load: {e}")))?;
    // tokenizer.json files often carry the exporter's fixed padding and truncation (MiniLM:
    // pad to 128); the service pads per batch and truncates at the model's own limit.
    counter.with_padding(None);
    counter
        .with_truncation(None)
        .map_err(|e| invalid(file, e.to_string()))?;
    let mut tokenizer = counter.clone();
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| invalid(file, e.to_string()))?;
    Ok((tokenizer, counter))
}

impl Embedder {
    /// Load the model in `dir` and start the worker thread. `library` is the configured ONNX
    /// Runtime path, if any; `opts` are the engine's provider options (TensorRT is left out:
    /// its engines are built per input shape, and every batch has a new one), with the
    /// session's intra-op threads taken from `cfg.threads`.
    pub fn start(
        dir: &Path,
        library: Option<&Path>,
        opts: &ProviderOptions,
        cfg: &EmbedderConfig,
    ) -> Result<Embedder, EmbedError> {
        if cfg.batch_size == 0 || cfg.max_queue == 0 {
            return Err(EmbedError::Config(
                "batch_size and max_queue must be at least 1".into(),
            ));
        }
        // Cheap checks first, so a broken directory fails before ONNX Runtime parses a graph.
        let spec = EmbedSpec::read(dir)?;
        let (tokenizer, counter) = load_tokenizers(&spec)?;
        let mut opts = opts.clone();
        opts.providers.retain(|p| *p != Provider::Tensorrt);
        if opts.providers.is_empty() {
            opts.providers.push(Provider::Cpu);
        }
        opts.intra_threads = cfg.threads;
        let rt = ort_env::runtime(library)?;
        let (session, provider) = rt.load_session(&spec.onnx, &opts)?;
        let graph = bind_graph(&session, &spec)?;
        let sha = sha256_file(&spec.onnx).map_err(|e| invalid(&spec.onnx, e.to_string()))?;
        let model_id = format!("{}@{}", spec.name, &sha[..12]);
        let model = Model::new(session, graph, &spec);
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            model,
            rx,
            batch_size: cfg.batch_size,
            stop: stop.clone(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("edgeseek-embed".into())
            .spawn(move || worker.run())
            .map_err(|e| EmbedError::Config(format!("cannot start the embedding thread: {e}")))?;
        tracing::debug!(model = %model_id, provider = provider.as_str(), dim = spec.dim,
            max_tokens = spec.max_tokens, pooling = spec.pooling.as_str(), "embedding model ready");
        Ok(Embedder {
            shared: Arc::new(Shared {
                spec,
                model_id,
                provider,
                cfg: cfg.clone(),
                tokenizer,
                counter,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                stop,
                counters,
            }),
        })
    }

    pub fn spec(&self) -> &EmbedSpec {
        &self.shared.spec
    }

    /// Served name: the directory name (`all-minilm-l6-v2`).
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// Directory name and the first 12 hex digits of the ONNX file's sha256
    /// (`all-minilm-l6-v2@8199be6f699a`).
    pub fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    pub fn dim(&self) -> usize {
        self.shared.spec.dim
    }

    /// Longest input in tokens, `[CLS]`/`[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.shared.spec.max_tokens
    }

    pub fn provider(&self) -> Provider {
        self.shared.provider
    }

    pub fn config(&self) -> &EmbedderConfig {
        &self.shared.cfg
    }

    /// Tokens of `text` without special tokens (0 if the tokenizer fails on it).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.shared
            .counter
            .encode_fast(text, false)
            .map_or(0, |e| e.len())
    }

    pub fn stats(&self) -> EmbedStats {
        let c = &self.shared.counters;
        EmbedStats {
            queued: c.queued.load(Ordering::Relaxed),
            inputs: c.inputs.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
        }
    }

    /// Embed `texts` (truncating long ones), waiting for the worker. One unit vector per
    /// input, in order. Blocks: call it from a plain thread or `spawn_blocking`.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_with(texts, &EmbedRequest::default())
            .map(|e| e.vectors)
    }

    /// Embed `texts` with explicit options; also reports the tokens read. Blocks.
    pub fn embed_with<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        req: &EmbedRequest,
    ) -> Result<Embeddings, EmbedError> {
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Vec::new(),
                tokens: 0,
            });
        }
        let rows = self.tokenize(texts, req.overflow)?;
        let tokens = rows.iter().map(|r| r.ids.len()).sum();
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job {
            rows,
            cancel: req.cancel.clone(),
            reply,
        };
        self.send(job, req.wait)?;
        let vectors = result.recv().map_err(|_| EmbedError::ShutDown)??;
        Ok(Embeddings { vectors, tokens })
    }

    fn tokenize<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        overflow: Overflow,
    ) -> Result<Vec<Tokens>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.as_ref().is_empty()) {
            return Err(EmbedError::EmptyInput { index });
        }
        let sh = &self.shared;
        let max = sh.spec.max_tokens;
        let tok = match overflow {
            Overflow::Truncate => &sh.tokenizer,
            Overflow::Reject => &sh.counter,
        };
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = tok
            .encode_batch_fast(inputs, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                if e.len() > max {
                    return Err(EmbedError::TooLong {
                        index,
                        tokens: e.len(),
                        max,
                    });
                }
                Ok(Tokens {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    fn send(&self, job: Job, wait: bool) -> Result<(), EmbedError> {
        let sh = &self.shared;
        let tx = lock(&sh.tx).clone().ok_or(EmbedError::ShutDown)?;
        let queued = sh.counters.queued.fetch_add(1, Ordering::SeqCst);
        let sent = if wait {
            tx.send(job).map_err(|_| EmbedError::ShutDown)
        } else if queued >= sh.cfg.max_queue {
            Err(EmbedError::QueueFull(queued))
        } else {
            tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => EmbedError::QueueFull(queued),
                TrySendError::Disconnected(_) => EmbedError::ShutDown,
            })
        };
        if sent.is_err() {
            sh.counters.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Stop the worker: the batch running finishes, every input not yet embedded fails with
    /// [`EmbedError::ShutDown`], and so do later calls. Returns when the thread has exited
    /// (at most one batch later). Dropping the last clone does the same.
    pub fn shutdown(&self) {
        self.shared.stop();
    }
}

impl Shared {
    fn stop(&self) {
        // Dropping the last sender ends the worker's `recv` once the queue is drained.
        crate::util::stop_worker(&self.stop, &self.tx, &self.thread, "embedding");
    }
}

impl Drop for Shared {
    /// Join the worker, so its ONNX Runtime session is released before the process exits
    /// (the worker holds no reference to `Shared`, so this cannot wait on itself).
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) struct Worker {
    model: Model,
    rx: Receiver<Job>,
    batch_size: usize,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut rows = first.rows.len();
            let mut jobs = vec![first];
            // Requests that arrived together share batches.
            while rows < self.batch_size {
                match self.rx.try_recv() {
                    Ok(j) => {
                        rows += j.rows.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            self.counters.queued.fetch_sub(jobs.len(), Ordering::SeqCst);
            self.process(jobs);
        }
    }

    /// Embed every row of `jobs`, sorted by length, `batch_size` rows per call; reply to
    /// each job.
    fn process(&mut self, jobs: Vec<Job>) {
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.rows.len()).map(move |r| (j, r)))
            .collect();
        order.sort_by_key(|&(j, r)| jobs[j].rows[r].ids.len());
        let mut results: Vec<Result<Vec<Vec<f32>>, EmbedError>> = jobs
            .iter()
            .map(|j| Ok(vec![Vec::new(); j.rows.len()]))
            .collect();
        for batch in order.chunks(self.batch_size) {
            if self.stop.load(Ordering::Relaxed) {
                for r in results.iter_mut() {
                    *r = Err(EmbedError::ShutDown);
                }
                break;
            }
            let live: Vec<(usize, usize)> = batch
                .iter()
                .copied()
                .filter(|&(j, _)| results[j].is_ok() && !jobs[j].cancelled())
                .collect();
            if live.is_empty() {
                continue;
            }
            let rows: Vec<&Tokens> = live.iter().map(|&(j, r)| &jobs[j].rows[r]).collect();
            match self.model.run(&rows) {
                Ok(vectors) => {
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .inputs
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    let tokens: usize = rows.iter().map(|t| t.ids.len()).sum();
                    self.counters
                        .tokens
                        .fetch_add(tokens as u64, Ordering::Relaxed);
                    for (&(j, r), v) in live.iter().zip(vectors) {
                        if let Ok(out) = &mut results[j] {
                            out[r] = v;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "embedding batch failed");
                    let msg = e.to_string();
                    for &(j, _) in &live {
                        results[j] = Err(EmbedError::Run(msg.clone()));
                    }
                }
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let result = if job.cancelled() && result.is_ok() {
                Err(EmbedError::Cancelled)
            } else {
                result
            };
            // The caller may be gone (cancelled); nothing to do then.
            let _ = job.reply.try_send(result);
        }
    }
}

impl Embed for Embedder {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Embedder::embed(self, texts).map_err(|e| e.to_string())
    }

    fn dim(&self) -> usize {
        Embedder::dim(self)
    }

    fn count_tokens(&self, text: &str) -> usize {
        Embedder::count_tokens(self, text)
    }

    fn max_tokens(&self) -> usize {
        Embedder::max_tokens(self)
    }

    fn covers(&self, script: Script) -> bool {
        match script {
            Script::Latin => true,
            Script::Cjk | Script::Other => self.shared.spec.multilingual,
        }
    }

    fn model_id(&self) -> String {
        Embedder::model_id(self).to_string()
    }
}
