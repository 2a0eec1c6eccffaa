//! Property test: the frontend never panics. 100,000+ inputs in total —
//! mutations of the real model files (byte flips, token deletions,
//! duplications and swaps, line edits, truncations, number swaps) and random
//! token soups — go through `compile_model`; each must give a graph or
//! diagnostics, and every diagnostic must render. Deterministic (fixed seeds).

use pgc_frontend::lexer::{lex, Tok};
use pgc_frontend::{compile_model, Diagnostics};
use pgc_ir::Mode;

/// splitmix64: small, deterministic, good enough for mutation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const INTERESTING: &[&str] = &[
    "0", "1", "-1", "2", "64", "8193", "4294967296", "9223372036854775807", "99999999999999999999", "1e308", "1e-320",
    "0.0", "-0.5", "{", "}", "(", ")", "[", "]", ";", ",", ".", "..", "=", "==", "+", "-", "*", "/", "%", "^", "!",
    "&&", "||", ":", "param", "scope", "fn", "let", "const", "for", "in", "if", "else", "input", "output", "assert",
    "qat", "prune", "init", "clip", "x", "i", "dim", "layers", "rms", "linear", "skips.pop()", "\"s\"", "é", "λ", "\t",
    "\n", "//", "f16", "int4", "int9", "ste(4)", "rows(1,0)", "true", "false", "[]", "x[0]", "blocks.{i}",
];

const SMALL: &[(&str, &str)] = &[("layers", "2"), ("seq", "8"), ("dim", "32"), ("vocab", "64"), ("bigram_buckets", "64"), ("bigram_dim", "8")];

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(src: &str, rng: &mut Rng) -> String {
    let mut s = src.to_string();
    let rounds = if rng.chance(60) { 1 } else { 2 + rng.below(3) };
    for _ in 0..rounds {
        if s.is_empty() {
            s.push_str(INTERESTING[rng.below(INTERESTING.len())]);
            continue;
        }
        let (toks, _) = lex(&s);
        let toks: Vec<_> = toks.into_iter().filter(|t| t.tok != Tok::Eof).collect();
        match rng.below(13) {
            // Replace a number by another (keeps the syntax, stresses shapes and limits).
            9 | 10 if toks.iter().any(|t| matches!(t.tok, Tok::Int | Tok::Float)) => {
                let nums: Vec<_> = toks.iter().filter(|t| matches!(t.tok, Tok::Int | Tok::Float)).collect();
                let t = nums[rng.below(nums.len())];
                let v = match rng.below(6) {
                    0 => rng.below(20).to_string(),
                    1 => format!("{}.5", rng.below(10)),
                    2 => ["0", "1", "3", "7", "8193", "65536", "1000000000", "0.0"][rng.below(8)].to_string(),
                    3 => (1u64 << rng.below(63)).to_string(),
                    4 => format!("-{}", rng.below(5)),
                    _ => format!("{}e{}", rng.below(10), rng.below(40)),
                };
                s.replace_range(t.span.start..t.span.end, &v);
            }
            // Replace a name by another name of the file (keeps the syntax, stresses name resolution and types).
            11 | 12 if toks.iter().any(|t| t.tok == Tok::Ident) => {
                let names: Vec<_> = toks.iter().filter(|t| t.tok == Tok::Ident).collect();
                let t = names[rng.below(names.len())];
                let o = names[rng.below(names.len())];
                let text = s[o.span.start..o.span.end].to_string();
                s.replace_range(t.span.start..t.span.end, &text);
            }
            // Byte flip: replace one character by a random ASCII one.
            0 => {
                let i = floor_boundary(&s, rng.below(s.len()));
                let end = floor_boundary(&s, i + 1).max(i + s[i..].chars().next().map_or(0, |c| c.len_utf8()));
                let c = (32 + rng.below(95)) as u8 as char;
                s.replace_range(i..end, &c.to_string());
            }
            // Delete a token.
            1 if !toks.is_empty() => {
                let t = toks[rng.below(toks.len())];
                s.replace_range(t.span.start..t.span.end, "");
            }
            // Duplicate a token.
            2 if !toks.is_empty() => {
                let t = toks[rng.below(toks.len())];
                let text = s[t.span.start..t.span.end].to_string();
                s.insert_str(t.span.end, &format!(" {text}"));
            }
            // Swap two tokens.
            3 if toks.len() >= 2 => {
                let (mut a, mut b) = (toks[rng.below(toks.len())], toks[rng.below(toks.len())]);
                if a.span.start > b.span.start {
                    std::mem::swap(&mut a, &mut b);
                }
                if a.span.end <= b.span.start {
                    let (ta, tb) = (s[a.span.start..a.span.end].to_string(), s[b.span.start..b.span.end].to_string());
                    s.replace_range(b.span.start..b.span.end, &ta);
                    s.replace_range(a.span.start..a.span.end, &tb);
                }
            }
            // Replace a token by an interesting one.
            4 if !toks.is_empty() => {
                let t = toks[rng.below(toks.len())];
                s.replace_range(t.span.start..t.span.end, INTERESTING[rng.below(INTERESTING.len())]);
            }
            // Insert an interesting token anywhere.
            5 => {
                let i = floor_boundary(&s, rng.below(s.len() + 1));
                s.insert_str(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            // Truncate.
            6 => {
                let i = floor_boundary(&s, rng.below(s.len() + 1));
                s.truncate(i);
            }
            // Delete or duplicate a line.
            7 => {
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let k = rng.below(lines.len());
                    let mut out: Vec<&str> = Vec::with_capacity(lines.len() + 1);
                    for (j, l) in lines.iter().enumerate() {
                        if j != k || rng.chance(50) {
                            out.push(l);
                        }
                        if j == k {
                            out.push(l);
                        }
                    }
                    s = out.join("\n");
                }
            }
            // Copy a random slice of tokens somewhere else.
            _ if toks.len() >= 2 => {
                let a = rng.below(toks.len());
                let b = (a + 1 + rng.below(8)).min(toks.len() - 1);
                let text = s[toks[a].span.start..toks[b].span.end].to_string();
                let at = toks[rng.below(toks.len())].span.start;
                s.insert_str(at, &text);
            }
            _ => {}
        }
    }
    s
}

fn random_soup(rng: &mut Rng) -> String {
    let n = rng.below(60);
    let mut s = String::new();
    for _ in 0..n {
        if rng.chance(10) {
            s.push((rng.below(128) as u8) as char);
        } else {
            s.push_str(INTERESTING[rng.below(INTERESTING.len())]);
        }
        if rng.chance(70) {
            s.push(' ');
        }
    }
    s
}

fn check(src: &str, sets: &[(String, String)], mode: Mode, stats: &mut (usize, usize), render: bool) {
    match compile_model(src, "fuzz.pgdsl", sets, mode) {
        Ok(g) => {
            stats.0 += 1;
            assert!(pgc_ir::verify(&g).is_ok());
            // What `pgc compile` does with a graph must not panic either.
            let _ = pgc_ir::report::Report::from_graph(&g).to_json();
            if render {
                let _ = pgc_ir::text::print(&g);
            }
        }
        Err(Diagnostics { items, .. }) if items.is_empty() => panic!("empty diagnostics for:\n{src}"),
        Err(d) => {
            stats.1 += 1;
            if render {
                let r = d.render_with(src, false);
                assert!(r.starts_with("error: fuzz.pgdsl"), "{r}");
            }
        }
    }
}

fn run(seed: u64, n: usize) {
    let root = env!("CARGO_MANIFEST_DIR");
    let models: Vec<String> = ["11l.pgdsl", "10l_int5.pgdsl"]
        .iter()
        .map(|m| std::fs::read_to_string(format!("{root}/../models/{m}")).unwrap())
        .collect();
    let small: Vec<(String, String)> = SMALL.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let mut rng = Rng(seed);
    let mut stats = (0usize, 0usize);
    let start = std::time::Instant::now();
    for i in 0..n {
        let src = if rng.chance(10) { random_soup(&mut rng) } else { mutate(&models[rng.below(models.len())], &mut rng) };
        let sets = if rng.chance(95) { &small[..] } else { &[][..] };
        let mode = if rng.chance(50) { Mode::Train } else { Mode::Eval };
        let t0 = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&src, sets, mode, &mut stats, i % 4 == 0)));
        if std::env::var_os("FUZZ_SLOW").is_some() && t0.elapsed().as_millis() > 100 {
            let d = compile_model(&src, "f", sets, mode).err().map(|d| d.items[0].message.clone());
            eprintln!("slow #{i} {:?} sets={} -> {d:?}", t0.elapsed(), sets.len());
        }
        if result.is_err() {
            panic!("input #{i} (seed {seed}) panicked; input:\n{src}\n--- sets {sets:?}");
        }
    }
    eprintln!("seed {seed}: {n} inputs, {} compiled, {} rejected, {:?}", stats.0, stats.1, start.elapsed());
    assert!(stats.0 > n / 50, "too few mutants compiled ({}): the mutator is too destructive", stats.0);
    assert!(stats.1 > n / 4, "too few mutants rejected ({})", stats.1);
}

// Four shards of 25,000 so the test harness can run them in parallel.
#[test]
fn fuzz_shard_0() {
    run(0x5EED_0000, 25_000);
}
#[test]
fn fuzz_shard_1() {
    run(0x5EED_0001, 25_000);
}
#[test]
fn fuzz_shard_2() {
    run(0x5EED_0002, 25_000);
}
#[test]
fn fuzz_shard_3() {
    run(0x5EED_0003, 25_000);
}

#[test]
fn pathological_inputs() {
    let cases = [
        String::new(),
        "\u{0}".repeat(100),
        "(".repeat(100_000),
        "[".repeat(100_000),
        "{".repeat(100_000),
        "-".repeat(100_000) + "1",
        "!".repeat(100_000),
        format!("let x = {};", "1+".repeat(50_000) + "1"),
        format!("let x = {}1;", "f(".repeat(5_000)),
        "fn f(x) { f(x) + f(x) } let y = f(1);".to_string(),
        "fn f(x) { g(x) } fn g(x) { f(x) } output y = f(1);".to_string(),
        "let l = [1]; for i in 0..100000 { l = l + l; }".to_string(),
        "let x = input x[1000000, 1000000]: f32; let y = x + x; output y = linear(y, param w[1000000, 1000000]);".to_string(),
        "let x = input x[4]: f32; for i in 0..100000 { x = x + x; }".to_string(),
        "const a = 2; let b = a ^ 62 * 4;".to_string(),
        "let a = -9223372036854775807 - 1; let b = a / -1;".to_string(),
        "let a = -9223372036854775807 - 1; let b = -a;".to_string(),
        "let s = [1,2,3]; let x = s[-4];".to_string(),
        "let x = input x[2,3]: f32; let y = permute(x, [0, 0]); let z = permute(x, [-9, 1]);".to_string(),
        "let x = input x[2,3]: f32; let y = reshape(x, [-1, -1]);".to_string(),
        "let x = input x[0,3]: f32; let y = reshape(x, [-1, 3]);".to_string(),
        "let x = input x[2,3]: f32; let y = shift(x, 0, offset=-9223372036854775807 - 1);".to_string(),
        "let x = input x[2,3]: f32; output y = x ^ 9223372036854775807;".to_string(),
        "let x = input x[1,1,1,1,1,1,1,1]: f32; let y = split_heads(x, 1);".to_string(),
        "scope a.{\"b.c\"} { }".to_string(),
        "scope a.{[1]} { }".to_string(),
        "const x = 1e308 * 10.0;".to_string(),
        "let x = to_int(1e300);".to_string(),
    ];
    let mut stats = (0, 0);
    for c in &cases {
        for mode in [Mode::Train, Mode::Eval] {
            check(c, &[], mode, &mut stats, true);
        }
    }
}

