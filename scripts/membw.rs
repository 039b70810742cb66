// membw.rs — multi-threaded streaming READ bandwidth probe (single file, std only).
//
//   rustc -O -C target-cpu=native scripts/membw.rs -o /tmp/membw
//   /tmp/membw [THREADS] [MIB]
//
// THREADS defaults to std::thread::available_parallelism(); MIB defaults to
// max(1024, 8 x L3 size read from /sys/devices/system/cpu/cpu0/cache). The buffer is
// touched (written, in parallel, so pages are first-touched by the reading threads), then each
// of 5 passes has every thread sum the u64s of its own contiguous slice with 8 independent
// accumulators (chunks_exact(8), so the compiler vectorises it); the best pass wins.
// Prints one line: {"read_gb_s": x, "threads": T, "bytes": N, ...} (GB = 1e9 bytes).
use std::hint::black_box;
use std::time::Instant;

fn l3_bytes() -> Option<usize> {
    for idx in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
        let level = std::fs::read_to_string(format!("{base}/level")).ok()?;
        if level.trim() != "3" {
            continue;
        }
        let s = std::fs::read_to_string(format!("{base}/size")).ok()?;
        let s = s.trim();
        let (num, mul) = match s.chars().last()? {
            'K' => (&s[..s.len() - 1], 1usize << 10),
            'M' => (&s[..s.len() - 1], 1 << 20),
            'G' => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        return num.parse::<usize>().ok().map(|n| n * mul);
    }
    None
}

#[inline(never)]
fn sum_slice(s: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = s.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let mut t = rem.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    for a in acc {
        t = t.wrapping_add(a);
    }
    t
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let l3 = l3_bytes();
    let bytes: usize = match args.get(2).and_then(|s| s.parse::<usize>().ok()) {
        Some(mib) => mib << 20,
        None => (1usize << 30).max(8 * l3.unwrap_or(0)),
    };
    let n = bytes / 8;
    let n = n - n % (8 * threads); // whole 64-byte chunks per thread
    let per = n / threads;

    let mut buf: Vec<u64> = Vec::with_capacity(n);
    // SAFETY-free touch: extend via spare capacity written in parallel.
    {
        let spare = &mut buf.spare_capacity_mut()[..n];
        std::thread::scope(|sc| {
            for (t, part) in spare.chunks_mut(per).enumerate() {
                sc.spawn(move || {
                    for (i, x) in part.iter_mut().enumerate() {
                        x.write(((t * per + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    }
                });
            }
        });
    }
    // SAFETY: all n elements were initialised above.
    unsafe { buf.set_len(n) };

    let mut best = f64::INFINITY;
    let mut passes = Vec::new();
    let mut check = 0u64;
    for _ in 0..5 {
        let data = black_box(&buf[..]);
        let t0 = Instant::now();
        let total = std::thread::scope(|sc| {
            let hs: Vec<_> = data
                .chunks(per)
                .map(|part| sc.spawn(move || sum_slice(black_box(part))))
                .collect();
            hs.into_iter().fold(0u64, |a, h| a.wrapping_add(h.join().unwrap()))
        });
        let dt = t0.elapsed().as_secs_f64();
        check = check.wrapping_add(black_box(total));
        passes.push((n * 8) as f64 / dt / 1e9);
        best = best.min(dt);
    }
    black_box(check);
    let gbs = (n * 8) as f64 / best / 1e9;
    let passes: Vec<String> = passes.iter().map(|x| format!("{x:.2}")).collect();
    println!(
        "{{\"read_gb_s\": {:.2}, \"threads\": {}, \"bytes\": {}, \"passes_gb_s\": [{}], \"l3_bytes\": {}}}",
        gbs,
        threads,
        n * 8,
        passes.join(", "),
        l3.map(|x| x.to_string()).unwrap_or_else(|| "null".into())
    );
}
