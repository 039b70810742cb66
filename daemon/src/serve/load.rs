//! Model loading off the reactor: the chat models and the embedding model each on a plain
//! thread (seconds of ONNX Runtime work), then the knowledge base over the embedding model.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::api::{App, EmbedState, KbState};
use crate::config::Config;
use crate::engine::{embed, Embedder};
use crate::kb::base::KnowledgeBase;
use crate::kb::chunk::ChunkOptions;
use crate::kb::ingest::Ingestor;
use crate::kb::parse::ParseOptions;
use crate::kb::Embed;
use crate::util::{lock, unix_now};

use super::daemon::Daemon;

/// Load the chat models, in order, on a plain thread (seconds of ONNX Runtime work each, which
/// must not run on the reactor); each serves as soon as it is ready. A model that does not fit
/// the memory budget, or fails, is marked failed with the cause; the others still load.
pub(super) fn load_in_background(daemon: Arc<Daemon>) {
    let owner = daemon.clone();
    let spawned = std::thread::Builder::new()
        .name("edgeseek-load".into())
        .spawn(move || {
            let reg = &daemon.app.models;
            for name in reg.names() {
                match reg.load(&name, false) {
                    Ok(m) => {
                        if m.default {
                            *lock(&daemon.provider) =
                                reg.default_served().map(|s| s.scheduler.provider());
                        }
                    }
                    // A failed load has logged and recorded its cause.
                    Err(crate::api::registry::RegistryError::LoadFailed(..)) => {}
                    Err(e) => {
                        // Refused before it started (the budget): say why in its state.
                        tracing::error!(model = %name, error = %e, "model not loaded");
                        reg.fail(&name, e.to_string());
                    }
                }
            }
        });
    match spawned {
        Ok(handle) => *lock(&owner.loader) = Some(handle),
        Err(e) => tracing::error!(error = %e, "cannot start the model loading thread"),
    }
}

/// Open the knowledge base over the daemon's database with the loaded embedding model:
/// reads every collection into memory (BM25, vectors; HNSW graphs build in the background).
fn open_kb(app: &App, embedder: &Embedder, cfg: crate::config::KbConfig) -> KbState {
    let t = Instant::now();
    let embed: Arc<dyn Embed> = Arc::new(embedder.clone());
    // Chunks leave room for the model's [CLS]/[SEP] within its limit.
    let chunk = ChunkOptions {
        max_tokens: ChunkOptions::default()
            .max_tokens
            .min(embed.max_tokens().saturating_sub(2)),
        ..ChunkOptions::default()
    };
    // Uploads are spooled next to the database (the state directory).
    let store_path = app.keys().store().path();
    let spool_dir = store_path.parent().unwrap_or(store_path).join("spool");
    let spool = match crate::kb::spool::Spool::open(&spool_dir) {
        Ok(s) => s,
        Err(e) => return KbState::Off(format!("its spool {}: {e}", spool_dir.display())),
    };
    match KnowledgeBase::open(app.keys().store().clone(), embed, cfg.index.clone()) {
        Ok(kb) => {
            let n = kb.list_collections().len();
            tracing::info!(
                collections = n,
                secs = t.elapsed().as_secs_f64(),
                "knowledge base ready"
            );
            KbState::Ready(Arc::new(Ingestor::new(
                kb,
                ParseOptions::default(),
                chunk,
                cfg.ingest_limits(),
                spool,
            )))
        }
        Err(e) => {
            tracing::error!(error = %e, "knowledge base failed to open");
            KbState::Off(format!("it failed to open: {e}"))
        }
    }
}

/// Find and load the embedding model on its own thread (the chat model does not wait for
/// it, nor it for the chat model). No model, or a failed load, leaves `/v1/embeddings` at
/// 503 with the cause; chat is unaffected.
pub(super) fn load_embedder_in_background(daemon: &Arc<Daemon>, config: &Config, state_dir: &Path) {
    let ec = &config.embeddings;
    let app = &daemon.app;
    if !ec.enabled {
        app.set_embedder(EmbedState::Off(
            "embeddings are disabled in the configuration (embeddings.enabled = false)".into(),
        ));
        app.set_kb(KbState::Off(
            "it needs the embedding model (embeddings.enabled = false)".into(),
        ));
        return;
    }
    let dir = match embed::locate(ec.model.as_deref(), state_dir) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "no embedding model; /v1/embeddings answers 503");
            app.set_kb(KbState::Off(format!("it needs the embedding model: {e}")));
            app.set_embedder(if ec.model.is_some() {
                EmbedState::Failed(e.to_string())
            } else {
                EmbedState::Off(e.to_string())
            });
            return;
        }
    };
    app.set_embedder(EmbedState::Loading);
    let owner = daemon.clone();
    let library = config.runtime.library.clone();
    let opts = config.provider_options(state_dir);
    let cfg = config.embedder_config();
    let kb_cfg = config.kb.clone();
    let spawned = std::thread::Builder::new()
        .name("edgeseek-embed-load".into())
        .spawn(move || {
            let t = Instant::now();
            let state = match Embedder::start(&dir, library.as_deref(), &opts, &cfg) {
                Ok(embedder) => {
                    tracing::info!(
                        model = %embedder.model_id(),
                        provider = embedder.provider().as_str(),
                        secs = t.elapsed().as_secs_f64(),
                        "embedding model ready"
                    );
                    EmbedState::Ready {
                        embedder,
                        loaded_at: unix_now(),
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "embedding model failed to load");
                    EmbedState::Failed(e.to_string())
                }
            };
            let kb = match &state {
                EmbedState::Ready { embedder, .. } => open_kb(&owner.app, embedder, kb_cfg),
                EmbedState::Failed(e) | EmbedState::Off(e) => {
                    KbState::Off(format!("the embedding model failed to load: {e}"))
                }
                EmbedState::Loading => KbState::Loading,
            };
            owner.app.set_embedder(state);
            owner.app.set_kb(kb);
        });
    match spawned {
        Ok(handle) => *lock(&daemon.embed_loader) = Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the embedding model loading thread");
            app.set_embedder(EmbedState::Failed(format!(
                "cannot start the loading thread: {e}"
            )));
        }
    }
}
