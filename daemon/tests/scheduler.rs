//! Continuous batching on the tiny fixtures: exactness against the single-stream path,
//! backpressure, KV budget and cancellation. Needs the ONNX Runtime library that
//! `scripts/setup` put in `<repo>/.runtime` (cargo runs these with cwd = daemon/).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeseek::engine::template::ChatMessage;
use edgeseek::engine::{
    Engine, Event, FinishReason, GenerateRequest, Prompt, Provider, ProviderOptions,
    ProviderPolicy, RequestHandle, Scheduler, SchedulerConfig, SchedulerError,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn load(fixture: &str) -> Engine {
    let opts = ProviderOptions {
        providers: vec![Provider::Cpu],
        policy: ProviderPolicy::Strict,
        intra_threads: 1,
        ..ProviderOptions::default()
    };
    let lib = root().join(".runtime");
    Engine::load(
        &root().join("tests/fixtures").join(fixture),
        Some(&lib),
        &opts,
    )
    .expect("load fixture")
}

/// The parity prompts plus one long prompt (several prefill chunks).
fn prompts() -> Vec<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(root().join("tests/parity/cases.json")).expect("cases");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("cases json");
    let mut out: Vec<Vec<ChatMessage>> = cases
        .iter()
        .map(|c| serde_json::from_value(c["messages"].clone()).expect("messages"))
        .collect();
    out.push(vec![ChatMessage {
        role: "user".into(),
        content: Some(
            "Summarise this, please: ".to_string()
                + &"the quick brown fox jumps over the lazy dog; ".repeat(12),
        ),
        extra: Default::default(),
    }]);
    out
}

fn greedy(messages: Vec<ChatMessage>, tokens: usize) -> GenerateRequest {
    // Random-weight fixtures may emit EOS early; exactly `tokens` ids compare more.
    GenerateRequest::greedy_exact(Prompt::Messages(messages), tokens)
}

fn config(max_batch: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_batch,
        max_queue: 64,
        kv_budget_bytes: 64 << 20,
        prefill_chunk: 16,
        prefix_cache_bytes: 16 << 20,
    }
}

/// Wait for the first text of a request (it is then decoding in the batch).
fn first_text(h: &mut RequestHandle) {
    let t = Instant::now();
    loop {
        match h.try_recv() {
            Ok(Some(Event::Content(_) | Event::Reasoning(_))) => return,
            Ok(Some(other)) => panic!("unexpected event before text: {other:?}"),
            Ok(None) => {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "no event within 60 s"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(()) => panic!("the request ended without an event"),
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A sequence's greedy ids are identical alone (single-stream `Engine::generate`) and in a
/// batch of 8 with prompts of different lengths joining at different steps, prefilled in
/// chunks and leaving at different steps.
fn batched_equals_single(fixture: &str) {
    const TOKENS: usize = 40;
    let mut engine = load(fixture);
    let alone: Vec<Vec<u32>> = prompts()
        .into_iter()
        .map(|m| {
            engine
                .generate(&greedy(m, TOKENS), &mut |_| true)
                .expect("single stream")
                .token_ids
        })
        .collect();
    assert!(alone.iter().all(|ids| ids.len() == TOKENS));

    let sched = Scheduler::start(engine, config(8)).expect("start");
    let mut handles = Vec::new();
    for (i, m) in prompts().into_iter().enumerate() {
        // Different lengths so rows also leave at different steps.
        let mut h = sched.submit(greedy(m, TOKENS - 3 * i)).expect("submit");
        if i % 2 == 0 {
            // Join while the others are mid-decode.
            first_text(&mut h);
        }
        handles.push(h);
    }
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.wait().expect("batched result");
        assert_eq!(
            out.token_ids,
            alone[i][..TOKENS - 3 * i],
            "{fixture}: prompt {i} diverged in the batch"
        );
        assert_eq!(out.finish_reason, FinishReason::Length);
    }
    let stats = sched.stats();
    assert!(
        stats.max_batch_seen >= 4,
        "{fixture}: never batched more than {} sequences",
        stats.max_batch_seen
    );
    // The loop publishes its gauges just after the last `Done`.
    wait_until("gauges settle", || {
        let s = sched.stats();
        (s.active, s.queued, s.kv_used_bytes, s.kv_reserved_bytes) == (0, 0, 0, 0)
    });
    sched.shutdown();
}

#[test]
fn batched_equals_single_qwen2_genai() {
    batched_equals_single("tiny-qwen2-genai");
}

#[test]
fn batched_equals_single_llama_genai() {
    batched_equals_single("tiny-llama-genai");
}

#[test]
fn batched_equals_single_qwen2_onnx_community() {
    batched_equals_single("tiny-qwen2-onnx");
}

fn long(tokens: usize) -> GenerateRequest {
    greedy(
        vec![ChatMessage {
            role: "user".into(),
            content: Some("Hello".into()),
            extra: Default::default(),
        }],
        tokens,
    )
}

#[test]
fn full_queue_fails_at_once_and_the_rest_complete() {
    let sched = Scheduler::start(
        load("tiny-qwen2-genai"),
        SchedulerConfig {
            max_batch: 1,
            max_queue: 2,
            ..config(1)
        },
    )
    .expect("start");
    let mut first = sched.submit(long(200)).expect("first");
    first_text(&mut first);
    // One running; two may wait; the fourth is refused without blocking.
    let a = sched.submit(long(5)).expect("second");
    let b = sched.submit(long(5)).expect("third");
    let t = Instant::now();
    match sched.submit(long(5)) {
        Err(SchedulerError::QueueFull { max_queue: 2, .. }) => {}
        Err(e) => panic!("expected QueueFull, got {e}"),
        Ok(_) => panic!("expected QueueFull, got a handle"),
    }
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(sched.stats().queued, 2);
    for h in [first, a, b] {
        h.wait().expect("queued requests complete");
    }
    // Room again.
    sched
        .submit(long(2))
        .expect("after drain")
        .wait()
        .expect("ok");
    sched.shutdown();
}

#[test]
fn kv_budget_rejects_oversized_and_serialises_what_does_not_fit() {
    let engine = load("tiny-qwen2-genai");
    let spec = engine.spec().clone();
    // layers × (K + V) × kv_heads × head_size × f32
    let per_token = (spec.num_layers * 2 * spec.num_kv_heads * spec.head_size * 4) as u64;
    let prompt_len = engine
        .prepare(&Prompt::Messages(vec![ChatMessage {
            role: "user".into(),
            content: Some("Hello".into()),
            extra: Default::default(),
        }]))
        .expect("prepare")
        .ids
        .len();
    // Room for one sequence of prompt + 60 tokens, not two.
    let budget = per_token * (prompt_len as u64 + 60);
    let sched = Scheduler::start(
        engine,
        SchedulerConfig {
            kv_budget_bytes: budget,
            ..config(8)
        },
    )
    .expect("start");
    match sched.submit(long(61)) {
        Err(SchedulerError::TooLarge { budget_bytes, .. }) => assert_eq!(budget_bytes, budget),
        Err(e) => panic!("expected TooLarge, got {e}"),
        Ok(_) => panic!("expected TooLarge, got a handle"),
    }
    let a = sched.submit(long(60)).expect("a");
    let b = sched.submit(long(60)).expect("b");
    assert_eq!(a.wait().expect("a").token_ids.len(), 60);
    assert_eq!(b.wait().expect("b").token_ids.len(), 60);
    let stats = sched.stats();
    assert_eq!(
        stats.max_batch_seen, 1,
        "both sequences ran at once over budget"
    );
    assert!(stats.kv_reserved_bytes <= budget);

    // Without max_tokens a request is capped by the budget as well as the context.
    let mut req = long(1);
    req.max_tokens = None;
    req.min_tokens = usize::MAX;
    let out = sched.submit(req).expect("uncapped").wait().expect("runs");
    assert_eq!(out.token_ids.len(), 60);
    assert_eq!(out.finish_reason, FinishReason::Length);
    sched.shutdown();
}

#[test]
fn dropping_a_handle_frees_its_slot_and_others_are_unaffected() {
    let mut engine = load("tiny-qwen2-genai");
    let messages = prompts().swap_remove(1);
    let alone = engine
        .generate(&greedy(messages.clone(), 120), &mut |_| true)
        .expect("alone")
        .token_ids;
    let sched = Scheduler::start(engine, config(8)).expect("start");
    let keep = sched.submit(greedy(messages, 120)).expect("keep");
    let mut drop_me = sched.submit(long(400)).expect("drop");
    first_text(&mut drop_me);
    wait_until("both decoding", || sched.stats().max_batch_seen == 2);
    drop(drop_me);
    wait_until("slot freed", || {
        let s = sched.stats();
        s.cancellations == 1 && s.active <= 1
    });
    let out = keep.wait().expect("keep finishes");
    assert_eq!(out.token_ids, alone, "the leave changed the other row");
    assert!(sched.stats().tokens_generated < 120 + 400);
    sched.shutdown();
}

#[test]
fn invalid_requests_fail_at_submit() {
    let sched = Scheduler::start(load("tiny-qwen2-genai"), config(2)).expect("start");
    let mut bad = long(4);
    bad.sampling.temperature = -1.0;
    assert!(matches!(sched.submit(bad), Err(SchedulerError::Invalid(_))));
    let too_long = long(100_000);
    assert!(matches!(
        sched.submit(too_long),
        Err(SchedulerError::Invalid(
            edgeseek::engine::GenerateError::ContextTooLong { .. }
        ))
    ));
    let mut ids = long(3);
    ids.prompt = Prompt::Ids(vec![5, 6, 7]);
    assert_eq!(
        sched
            .submit(ids)
            .expect("ids")
            .wait()
            .expect("ok")
            .prompt_tokens,
        3
    );
    let mut oov = long(3);
    oov.prompt = Prompt::Ids(vec![u32::MAX]);
    assert!(sched.submit(oov).is_err());
    sched.shutdown();
}

#[test]
fn shutdown_ends_running_requests_with_an_error() {
    let sched = Scheduler::start(load("tiny-qwen2-genai"), config(2)).expect("start");
    let mut h = sched.submit(long(400)).expect("submit");
    first_text(&mut h);
    let s2 = sched.clone();
    s2.shutdown();
    assert!(h.wait().is_err());
    assert!(matches!(
        sched.submit(long(2)),
        Err(SchedulerError::ShutDown)
    ));
}

/// Two conversations that share a long system prompt: the second reuses the first one's
/// prompt KV (whole 32-token blocks of the common prefix) and must still produce exactly the
/// ids of a cold single-stream run.
fn prefix_reuse_is_exact(fixture: &str) {
    const TOKENS: usize = 24;
    let system = "You are the help desk of a branch office. Answer from the handbook. ".repeat(4);
    let convo = |q: &str| {
        vec![
            ChatMessage {
                role: "system".into(),
                content: Some(system.clone()),
                extra: Default::default(),
            },
            ChatMessage {
                role: "user".into(),
                content: Some(q.into()),
                extra: Default::default(),
            },
        ]
    };
    let questions = ["How do I reset my password?", "请问报销流程是什么？"];
    let mut engine = load(fixture);
    let alone: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            engine
                .generate(&greedy(convo(q), TOKENS), &mut |_| true)
                .expect("single stream")
                .token_ids
        })
        .collect();
    let sched = Scheduler::start(engine, config(4)).expect("start");
    for (q, want) in questions.iter().zip(&alone) {
        let out = sched
            .submit(greedy(convo(q), TOKENS))
            .expect("submit")
            .wait()
            .expect("done");
        assert_eq!(&out.token_ids, want, "{fixture}: {q}");
    }
    let reused = sched.stats().prefix_reused_tokens;
    assert!(
        reused >= 64,
        "{fixture}: only {reused} prompt tokens came from the prefix cache"
    );
    assert_eq!(reused % 32, 0);
}

#[test]
fn prefix_reuse_is_exact_genai() {
    prefix_reuse_is_exact("tiny-qwen2-genai");
}

#[test]
fn prefix_reuse_is_exact_onnx_community() {
    prefix_reuse_is_exact("tiny-qwen2-onnx");
}

#[test]
fn prefix_cache_off_reuses_nothing() {
    let sched = Scheduler::start(
        load("tiny-qwen2-genai"),
        SchedulerConfig {
            prefix_cache_bytes: 0,
            ..config(2)
        },
    )
    .expect("start");
    for _ in 0..2 {
        sched.submit(long(4)).expect("submit").wait().expect("done");
    }
    assert_eq!(sched.stats().prefix_reused_tokens, 0);
}

/// The systemd watchdog keys off the heartbeat: it must advance while the engine is idle
/// (bounded idle waits) and while it works.
#[test]
fn heartbeat_advances_while_idle_and_busy() {
    let sched = Scheduler::start(load("tiny-qwen2-genai"), config(2)).expect("start");
    let h0 = sched.stats().heartbeat;
    std::thread::sleep(edgeseek::engine::scheduler::IDLE_HEARTBEAT * 3);
    let h1 = sched.stats().heartbeat;
    assert!(h1 >= h0 + 2, "idle heartbeat {h0} -> {h1}");
    let handle = sched
        .submit(greedy(prompts().remove(0), 8))
        .expect("submit");
    handle.wait().expect("generate");
    assert!(sched.stats().heartbeat > h1);
    sched.shutdown();
}
