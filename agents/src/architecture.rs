//! The crate's rooms and which may import which: every `crate::` path in the library's sources
//! points to a lower room (or within its own), and no two files import each other, directly or
//! round a loop. Read from the sources themselves, so a new import that points up fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms from the bottom up; a room may import only rooms of a lower rank, or its own.
const ROOMS: &[(&str, u8)] = &[
    ("error", 0),
    ("metric", 0),
    ("scalars", 0),
    ("lm", 1),
    ("losses", 1),
    ("rollout", 2),
    ("stages", 3),
    ("agent", 4),
    ("algorithm", 5),
    ("online", 6),
    ("algorithms", 7),
];

fn rank(room: &str) -> Option<u8> {
    ROOMS.iter().find(|(r, _)| *r == room).map(|(_, k)| *k)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A file's module path under `src/` (`lm/model/decode.rs` → `lm::model::decode`).
fn module_of(rel: &Path) -> String {
    let s = rel.with_extension("").to_string_lossy().replace('/', "::");
    s.strip_suffix("::mod").unwrap_or(&s).to_string()
}

/// The library code of a file: everything before its `#[cfg(test)]` module, without comments
/// (a doc link is not an import).
fn library_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b::…` path in `code`, as its segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::B, c};`: each item is a path of its own.
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let segs: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !segs.is_empty() {
                    out.push(segs);
                }
            }
            continue;
        }
        let mut segs = Vec::new();
        for seg in rest.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let whole = name.len() == seg.len();
            if name.is_empty() {
                break;
            }
            segs.push(name);
            if !whole {
                break;
            }
        }
        out.push(segs);
    }
    out
}

struct Graph {
    /// Module → the modules it imports.
    edges: BTreeMap<String, BTreeSet<String>>,
    /// Imports that point up or sideways, as "from → to".
    upward: Vec<String>,
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&root).unwrap()))
        .collect();
    let mut edges = BTreeMap::new();
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let from = module_of(rel);
        let room = from.split("::").next().unwrap().to_string();
        let test_module = rel.file_name().is_some_and(|n| n == "tests.rs");
        let Some(from_rank) = rank(&room).filter(|_| !test_module) else {
            continue; // lib.rs, the crate's test modules
        };
        let text = std::fs::read_to_string(f).unwrap();
        let mut to_set = BTreeSet::new();
        for segs in crate_paths(&library_code(&text)) {
            // The longest prefix of the path that is a module of ours.
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| modules.contains(m));
            let Some(target) = target else {
                // A name re-exported at the crate root: only the error type may be used that way.
                if !matches!(segs[0].as_str(), "AgentError" | "Result") {
                    upward.push(format!("{from} → crate::{} (import by its path)", segs[0]));
                }
                continue;
            };
            let to_room = target.split("::").next().unwrap();
            let to_rank = rank(to_room).unwrap_or(u8::MAX);
            let sibling_algorithm = room == "algorithms" && to_room == "algorithms";
            if target != from && (to_rank > from_rank || (to_rank == from_rank && to_room != room))
                || (sibling_algorithm && target != from)
            {
                upward.push(format!("{from} → {target}"));
            }
            if target != from {
                to_set.insert(target);
            }
        }
        edges.insert(from, to_set);
    }
    Graph { edges, upward }
}

/// A loop among the modules, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for n in edges.get(m).into_iter().flatten() {
            match state.get(n.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == n).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(n.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(n, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn every_import_points_down() {
    let g = graph();
    assert!(g.edges.len() > 30, "read only {} files", g.edges.len());
    assert!(
        g.upward.is_empty(),
        "imports that point up, sideways or through the crate root:\n{}",
        g.upward.join("\n")
    );
}

#[test]
fn no_module_imports_itself_round_a_loop() {
    let g = graph();
    if let Some(c) = find_cycle(&g.edges) {
        panic!("import cycle: {}", c.join(" → "));
    }
}

#[test]
fn the_checks_see_an_upward_import_and_a_loop() {
    let paths = crate_paths(
        "use crate::lm::model::{Gpt, GptConfig};\nlet x = crate::online::GroupCore::new();",
    );
    assert_eq!(paths[0], ["lm", "model"]);
    assert_eq!(paths[1], ["online", "GroupCore", "new"]);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    let cycle = find_cycle(&edges).expect("a → b → c → a");
    assert_eq!(cycle.first(), cycle.last());
    edges.get_mut("c").unwrap().clear();
    assert!(find_cycle(&edges).is_none());
    assert!(rank("algorithms") > rank("online") && rank("online") > rank("lm"));
}

/// Every line of the workspace's Rust sources, docs and README that names the toy algorithm,
/// outside its own file.
fn places_naming_the_toy() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in [
        "agents/src",
        "agents/tests",
        "envs/src",
        "src",
        "tests",
        "benches",
    ] {
        sources(&root.join(dir), &mut files);
    }
    files.push(root.join("README.md"));
    let own = root.join("agents/src/algorithms/toy.rs");
    let mut places = Vec::new();
    for f in files.iter().filter(|f| **f != own) {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("toy::") || line.contains("ToyConfig") || line.contains("ToyAgent") {
                places.push(format!(
                    "{}:{}",
                    f.strip_prefix(root).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    places
}

#[test]
fn adding_an_algorithm_is_one_file_and_one_registry_line() {
    // The registry line is the one place outside toy.rs; this test's own mentions are in strings.
    let places = places_naming_the_toy();
    let outside: Vec<&String> = places
        .iter()
        .filter(|p| !p.starts_with("agents/src/architecture.rs"))
        .collect();
    assert_eq!(outside.len(), 1, "{outside:?}");
    assert!(
        outside[0].starts_with("agents/src/algorithms/mod.rs:"),
        "{outside:?}"
    );

    // And through that line the toy is an algorithm like the others: named, parsed, configured
    // with its defaults, checked, and trained for an update.
    use crate::algorithms::{AgentConfig, AgentKind};
    use aligngym_envs::TextCodec;
    let kind: AgentKind = "toy".parse().unwrap();
    assert!(AgentKind::ALL.contains(&kind));
    assert_eq!(kind.learns(), crate::Learns::Online);
    let cfg = kind.default_config();
    cfg.check().unwrap();
    let v = cfg.to_value().unwrap();
    assert_eq!(AgentConfig::from_value(kind, Some(v)).unwrap(), cfg);

    let _g = crate::tests::lock();
    let task: std::sync::Arc<dyn aligngym_envs::Task> =
        std::sync::Arc::new(aligngym_envs::tasks::arithmetic::ArithmeticTask::default());
    let tokenizer = crate::lm::tokenizer::Tokenizer::train(&task.corpus(200, 0), 300).unwrap();
    let model_cfg = crate::lm::model::GptConfig::gpt2(tokenizer.vocab_size(), 1, 2, 16, 64);
    let (vs, model) = crate::stages::sft::init_model(&model_cfg, tch::Device::Cpu, 0).unwrap();
    let policy = crate::lm::policy::LmPolicy {
        vs,
        model,
        tokenizer,
        adapter_base: None,
    };
    // A reward that differs between samples, so the update has a gradient.
    struct Length;
    impl aligngym_envs::Rule for Length {
        fn name(&self) -> String {
            "length".into()
        }
        fn range(&self) -> (f32, f32) {
            (0.0, f32::INFINITY)
        }
        fn score(&self, _prompt: &str, completion: &str) -> f32 {
            completion.len() as f32 / 10.0
        }
    }
    let reward = || Ok(crate::rollout::RewardSignal::Scorer(Box::new(Length)));
    let ctx = crate::algorithm::BuildContext {
        task,
        policy,
        reward: &reward,
        learned_reward: true,
        prefs: None,
        prefs_queries: None,
        updates: 1,
        seed: 0,
    };
    let mut agent = cfg.build(ctx).unwrap();
    let m = agent.update(0).unwrap();
    assert!(m["loss"].is_finite() && m["grad_norm"] > 0.0, "{m:?}");
    for name in m.keys() {
        assert!(
            crate::metric::GLOSSARY.iter().any(|e| e.name == name),
            "`{name}` is not in the glossary"
        );
    }
    assert_eq!(agent.budget().samples, 8);
}
