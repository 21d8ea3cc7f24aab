//! Policy decisions against a reference model (proptest): random modes, allow and deny lists
//! (exact and wildcard patterns, each scoped to a direction), static routes and remote
//! domains spelt in any case with or without a trailing dot. The model is the precedence
//! written in the crate documentation, over plain string comparison; the policy must agree
//! with it on every verdict, on conflicts, on which allow rule the "other direction" hint
//! names and on which allow rules are reported as shadowed.

use causeway_policy::{
    DenyReason, Direction, Pattern, Policy, PolicyError, PrivacyMode, Rule, RuleDirection, Verdict,
};
use proptest::prelude::*;

const LABELS: [&str; 4] = ["a", "b", "partner", "test"];

/// A domain of 1 to `max` labels from [`LABELS`].
fn domain(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&LABELS[..]), 1..=max).prop_map(|l| l.join("."))
}

fn direction() -> impl Strategy<Value = RuleDirection> {
    prop::sample::select(vec![
        RuleDirection::All,
        RuleDirection::Inbound,
        RuleDirection::Outbound,
    ])
}

/// A rule as a model sees it: (is a wildcard, domain, direction). Wildcards need two labels.
fn rule() -> impl Strategy<Value = (bool, String, RuleDirection)> {
    (any::<bool>(), domain(3), direction())
        .prop_filter("a wildcard needs two labels", |(w, d, _)| {
            !w || d.contains('.')
        })
}

fn to_rule((wild, d, dir): &(bool, String, RuleDirection)) -> Rule {
    let written = if *wild { format!("*.{d}") } else { d.clone() };
    Rule::with_direction(&written, *dir).expect("a valid pattern")
}

fn model_matches((wild, d, _): &(bool, String, RuleDirection), remote: &str) -> bool {
    remote == d || (*wild && remote.ends_with(&format!(".{d}")))
}

fn model_covers(rd: RuleDirection, dir: Direction) -> bool {
    match rd {
        RuleDirection::All => true,
        RuleDirection::Inbound => dir == Direction::Inbound,
        RuleDirection::Outbound => dir == Direction::Outbound,
    }
}

fn model_applies(r: &(bool, String, RuleDirection), remote: &str, dir: Direction) -> bool {
    model_covers(r.2, dir) && model_matches(r, remote)
}

type ModelRule = (bool, String, RuleDirection);

fn model_allows(
    mode: PrivacyMode,
    allow: &[ModelRule],
    deny: &[ModelRule],
    statics: &[String],
    remote: &str,
    dir: Direction,
) -> bool {
    let denied = deny.iter().any(|r| model_applies(r, remote, dir));
    match mode {
        PrivacyMode::Off => true,
        PrivacyMode::DenyList => !denied,
        PrivacyMode::AllowList => {
            !denied
                && (allow.iter().any(|r| model_applies(r, remote, dir))
                    || statics.iter().any(|s| s == remote))
        }
    }
}

fn overlaps(a: RuleDirection, b: RuleDirection) -> bool {
    a == RuleDirection::All || b == RuleDirection::All || a == b
}

/// Every domain of up to four labels: enough to tell any two patterns of up to three apart.
fn universe() -> Vec<String> {
    let mut all: Vec<String> = LABELS.iter().map(|l| l.to_string()).collect();
    let mut last = all.clone();
    for _ in 1..4 {
        last = last
            .iter()
            .flat_map(|d| LABELS.iter().map(move |l| format!("{l}.{d}")))
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

/// `remote` spelt another way: some letters upper case, maybe a trailing dot.
fn respell(remote: &str, upper: u64, dot: bool) -> String {
    let mut s: String = remote
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if upper & (1 << (i % 64)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if dot {
        s.push('.');
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_policy_agrees_with_the_model(
        mode in prop::sample::select(vec![PrivacyMode::Off, PrivacyMode::AllowList, PrivacyMode::DenyList]),
        allow in prop::collection::vec(rule(), 0..5),
        deny in prop::collection::vec(rule(), 0..5),
        statics in prop::collection::vec(domain(3), 0..3),
        remotes in prop::collection::vec((domain(4), any::<u64>(), any::<bool>()), 1..8),
    ) {
        let built = Policy::from_rules(
            mode,
            allow.iter().map(to_rule).collect(),
            deny.iter().map(to_rule).collect(),
            statics.clone(),
        );
        let conflict = allow.iter().any(|a| {
            deny.iter().any(|d| a.0 == d.0 && a.1 == d.1 && overlaps(a.2, d.2))
        });
        let policy = match built {
            Err(PolicyError::Conflict(_)) => {
                prop_assert!(conflict, "a conflict the model does not see");
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
            Ok(p) => p,
        };
        prop_assert!(!conflict, "a conflict the policy did not refuse");
        for (remote, upper, dot) in &remotes {
            let spelt = respell(remote, *upper, *dot);
            for dir in [Direction::Inbound, Direction::Outbound] {
                let want = model_allows(mode, &allow, &deny, &statics, remote, dir);
                let got = policy.check(&spelt, dir);
                prop_assert_eq!(got.is_allowed(), want, "{} ({}) {}", spelt, remote, dir);
                if let Verdict::Deny(DenyReason::NotOnAllowList { other_direction, .. }) = got {
                    // The hint names an allow rule matching the domain, if there is one.
                    let any = allow.iter().any(|r| model_matches(r, remote));
                    prop_assert_eq!(other_direction.is_some(), any);
                    if let Some(rule) = other_direction {
                        prop_assert!(rule.pattern.matches(remote));
                    }
                }
            }
        }
        // Shadowed allow rules: every domain and direction they allow, a deny rule denies.
        let universe = universe();
        let shadowed: Vec<Rule> = policy.shadowed_allow_rules().into_iter().map(|(a, _)| a.clone()).collect();
        for a in &allow {
            let model = deny.iter().any(|d| {
                universe.iter().all(|x| !model_matches(a, x) || model_matches(d, x))
                    && [Direction::Inbound, Direction::Outbound]
                        .iter()
                        .all(|&dir| !model_covers(a.2, dir) || model_covers(d.2, dir))
            });
            prop_assert_eq!(shadowed.contains(&to_rule(a)), model, "{:?}", a);
        }
    }

    #[test]
    fn a_pattern_matches_what_it_names_however_spelt(
        rule in rule(),
        remote in domain(4),
        upper in any::<u64>(),
        dot in any::<bool>(),
    ) {
        let pattern: Pattern = to_rule(&rule).pattern;
        prop_assert_eq!(pattern.matches(&respell(&remote, upper, dot)), model_matches(&rule, &remote));
    }
}
