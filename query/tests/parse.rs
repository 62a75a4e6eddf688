//! The query language's parser: what it reads, the errors it gives (line,
//! column, expected, found), its limits, and that printing a query gives
//! text that parses back to the same query.

use nod_query::ast::{CmpOp, Expr, Item, Literal, Operand, Order, Pred, Projection, Query};
use nod_query::parse::{MAX_DEPTH, MAX_IN_ITEMS, MAX_QUERY_BYTES};
use nod_query::{parse, FieldPath};
use proptest::prelude::*;

fn field(p: &str) -> Operand {
    Operand::Field(FieldPath::parse(p).unwrap())
}

fn cmp(p: &str, op: CmpOp, l: Literal) -> Expr {
    Expr::Pred(Pred::Cmp(field(p), op, l))
}

#[test]
fn the_issues_example_parses_to_its_tree() {
    let q = parse(
        "SELECT key, value FROM '/users/' WHERE city = 'Oslo' AND age > 30 ORDER BY age DESC LIMIT 10",
    )
    .unwrap();
    assert_eq!(
        q,
        Query {
            explain: false,
            projection: Projection::Items(vec![
                Item {
                    operand: Operand::Key,
                    alias: None
                },
                Item {
                    operand: Operand::Value,
                    alias: None
                },
            ]),
            from: "/users/".into(),
            filter: Some(Expr::And(vec![
                cmp("city", CmpOp::Eq, Literal::String("Oslo".into())),
                cmp("age", CmpOp::Gt, Literal::Number(30.0)),
            ])),
            order: vec![Order {
                operand: field("age"),
                desc: true
            }],
            limit: Some(10),
            at_revision: None,
            serializable: false,
        }
    );
}

#[test]
fn every_clause_and_predicate() {
    let q = parse(
        "explain select count(*) from 'a' -- a comment\n\
         where not (x.y in (1, 'two', true, null) or \"key\" not between -1.5e3 and 2) \
         and z starts with 'it''s' and w is not missing and v is missing and u <> 1 \
         order by mod_revision, \"a b\" asc, lease desc limit 0 at revision 7 serializable",
    )
    .unwrap();
    assert!(q.explain && q.serializable);
    assert_eq!(q.projection, Projection::Count);
    assert_eq!((q.limit, q.at_revision), (Some(0), Some(7)));
    assert_eq!(
        q.order,
        vec![
            Order {
                operand: Operand::ModRevision,
                desc: false
            },
            Order {
                operand: field("\"a b\""),
                desc: false
            },
            Order {
                operand: Operand::Lease,
                desc: true
            },
        ]
    );
    let Some(Expr::And(conj)) = q.filter else {
        panic!("an AND: {:?}", q.filter)
    };
    assert_eq!(conj.len(), 5);
    assert_eq!(
        conj[0],
        Expr::Not(Box::new(Expr::Or(vec![
            Expr::Pred(Pred::In {
                operand: field("x.y"),
                negated: false,
                list: vec![
                    Literal::Number(1.0),
                    Literal::String("two".into()),
                    Literal::Bool(true),
                    Literal::Null
                ],
            }),
            Expr::Pred(Pred::Between {
                operand: field("\"key\""),
                negated: true,
                low: Literal::Number(-1500.0),
                high: Literal::Number(2.0),
            }),
        ])))
    );
    assert_eq!(
        conj[1],
        Expr::Pred(Pred::StartsWith(field("z"), "it's".into()))
    );
    assert_eq!(
        conj[2],
        Expr::Pred(Pred::Missing {
            operand: field("w"),
            negated: true
        })
    );
    assert_eq!(conj[4], cmp("u", CmpOp::Ne, Literal::Number(1.0)));
}

#[test]
fn and_binds_tighter_than_or_and_not_tightest() {
    let q = parse("SELECT * FROM 'p' WHERE a = 1 OR NOT b = 2 AND c = 3").unwrap();
    assert_eq!(
        q.filter.unwrap(),
        Expr::Or(vec![
            cmp("a", CmpOp::Eq, Literal::Number(1.0)),
            Expr::And(vec![
                Expr::Not(Box::new(cmp("b", CmpOp::Eq, Literal::Number(2.0)))),
                cmp("c", CmpOp::Eq, Literal::Number(3.0)),
            ]),
        ])
    );
}

#[test]
fn errors_say_where_what_was_expected_and_what_was_found() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "SELECT * FROM '/u/' WHERE age > ORDER BY age",
            (1, 33),
            "expected a number, string, TRUE, FALSE or NULL after '>', found ORDER",
        ),
        ("", (1, 1), "expected SELECT to start the query, found the end of the query"),
        ("SELECT * FROM", (1, 14), "expected a key prefix in single quotes after FROM, found the end of the query"),
        ("SELECT * FROM users", (1, 15), "found the name users"),
        (
            "SELECT key FROM 'p' WHERE key 'a'",
            (1, 31),
            "expected a comparison (=, !=, <, <=, >, >=, IN, BETWEEN, STARTS WITH, IS MISSING) after KEY, found the string 'a'",
        ),
        (
            "SELECT value FROM 'p'\nWHERE\n  version = 1 AND",
            (3, 18),
            "expected a field in the condition, found the end of the query",
        ),
        ("SELECT * FROM 'p' WHERE a = 'x", (1, 29), "this string is never closed"),
        ("SELECT * FROM 'p' WHERE \"a = 1", (1, 25), "this quoted name is never closed"),
        ("SELECT * FROM 'p' WHERE a ~ 1", (1, 27), "unexpected character '~'"),
        ("SELECT * FROM 'p' WHERE (a = 1", (1, 31), "expected ')' to close '('"),
        ("SELECT * FROM 'p' WHERE a IN ()", (1, 31), "in the IN list, found ')'"),
        ("SELECT * FROM 'p' WHERE a BETWEEN 1 OR 2", (1, 37), "expected AND between the bounds"),
        ("SELECT * FROM 'p' WHERE a IS NULL", (1, 30), "expected MISSING after IS, found NULL"),
        ("SELECT * FROM 'p' WHERE a = 1e999", (1, 29), "1e999 is out of range"),
        ("SELECT * FROM 'p' LIMIT -1", (1, 25), "expected a whole number from 0 to"),
        ("SELECT * FROM 'p' LIMIT 2.5", (1, 25), "found 2.5"),
        ("SELECT * FROM 'p' AT REVISION 0", (1, 31), "a revision is from 1 to"),
        ("SELECT * FROM 'p' AT REVISION 9223372036854775808", (1, 31), "not 9223372036854775808"),
        ("SELECT * FROM 'p' LIMIT 1 LIMIT 2", (1, 27), "expected the end of the query after the query, found LIMIT"),
        ("SELECT select FROM 'p'", (1, 8), "a field named select is written \"select\""),
        // After a dot a reserved word is a name: `a.FROM` is a field.
        ("SELECT a. FROM 'p'", (1, 16), "expected FROM after the selected columns, found the string 'p'"),
        ("SELECT a.'x' FROM 'p'", (1, 10), "expected a field name after '.', found the string 'x'"),
        ("SELECT a AS FROM 'p'", (1, 13), "expected a name after AS, found FROM"),
        ("SELECT COUNT(a) FROM 'p'", (1, 14), "expected '*' in COUNT(*)"),
        ("SELECT * FROM 'p' WHERE a STARTS WITH 1", (1, 39), "a string after STARTS WITH, found the number 1"),
        ("SELECT * FROM 'p' WHERE \"\" = 1", (1, 25), "a quoted name is empty"),
        ("SELECT * FROM 'é' WHERE \"ü\" ~ 1", (1, 29), "unexpected character '~'"),
        ("SELECT * FROM 'p' WHERE ü = 1", (1, 25), "unexpected character 'ü'"),
    ];
    for (text, (line, column), message) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!((e.line, e.column), (*line, *column), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
    }
    let e = parse("SELECT * FROM 'p' WHERE a > ORDER").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1, column 29: expected a number, string, TRUE, FALSE or NULL after '>', found ORDER"
    );
    assert_eq!(
        e.caret("SELECT * FROM 'p' WHERE a > ORDER"),
        "SELECT * FROM 'p' WHERE a > ORDER\n                            ^"
    );
}

#[test]
fn limits_on_size_depth_and_lists() {
    let long = format!("SELECT * FROM '{}'", "x".repeat(MAX_QUERY_BYTES));
    assert!(parse(&long).unwrap_err().message.contains("at most"));
    let nest = |n: usize| {
        format!(
            "SELECT * FROM 'p' WHERE {}a = 1{}",
            "(".repeat(n),
            ")".repeat(n)
        )
    };
    assert!(parse(&nest(MAX_DEPTH - 1)).is_ok());
    let e = parse(&nest(MAX_DEPTH + 5)).unwrap_err();
    assert!(e.message.contains("nest more than"), "{e}");
    let nots = format!("SELECT * FROM 'p' WHERE {}a = 1", "NOT ".repeat(10_000));
    assert!(parse(&nots).unwrap_err().message.contains("nest more than"));
    let list = |n: usize| {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("SELECT * FROM 'p' WHERE a IN ({})", items.join(","))
    };
    assert!(parse(&list(MAX_IN_ITEMS)).is_ok());
    assert!(parse(&list(MAX_IN_ITEMS + 1))
        .unwrap_err()
        .message
        .contains("at most 1000"));
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        Just(Operand::Key),
        Just(Operand::Value),
        Just(Operand::ModRevision),
        Just(Operand::CreateRevision),
        Just(Operand::Version),
        Just(Operand::Lease),
        // Plain names, reserved words, spaces, quotes, dots, non-ASCII.
        proptest::collection::vec(
            prop_oneof![
                "[a-z_][a-z0-9_-]{0,4}",
                Just("key".to_string()),
                Just("Select".to_string()),
                "[ a\"'.é0-]{1,4}",
            ],
            1..4
        )
        .prop_map(|s| Operand::Field(FieldPath::new(s).unwrap())),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        "[a' \n-é]{0,5}".prop_map(Literal::String),
        any::<u64>().prop_filter_map("finite", |b| {
            let f = f64::from_bits(b);
            f.is_finite().then_some(Literal::Number(f))
        }),
        (-100i32..100).prop_map(|n| Literal::Number(f64::from(n) / 4.0)),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
    ]
}

fn pred() -> impl Strategy<Value = Pred> {
    let cmp = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge)
    ];
    prop_oneof![
        (operand(), cmp, literal()).prop_map(|(o, c, l)| Pred::Cmp(o, c, l)),
        (
            operand(),
            any::<bool>(),
            proptest::collection::vec(literal(), 1..4)
        )
            .prop_map(|(operand, negated, list)| Pred::In {
                operand,
                negated,
                list
            }),
        (operand(), any::<bool>(), literal(), literal()).prop_map(
            |(operand, negated, low, high)| {
                Pred::Between {
                    operand,
                    negated,
                    low,
                    high,
                }
            }
        ),
        (operand(), "[a'%_]{0,3}").prop_map(|(o, s)| Pred::StartsWith(o, s)),
        (operand(), any::<bool>())
            .prop_map(|(operand, negated)| Pred::Missing { operand, negated }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    pred()
        .prop_map(Expr::Pred)
        .prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
                proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                inner.prop_map(|e| Expr::Not(Box::new(e))),
            ]
        })
}

fn query() -> impl Strategy<Value = Query> {
    let projection = prop_oneof![
        Just(Projection::All),
        Just(Projection::Count),
        proptest::collection::vec(
            (
                operand(),
                proptest::option::of(prop_oneof![
                    "[a-z]{1,3}",
                    Just("a b".to_string()),
                    Just("as".to_string())
                ])
            ),
            1..3
        )
        .prop_map(|items| Projection::Items(
            items
                .into_iter()
                .map(|(operand, alias)| Item { operand, alias })
                .collect()
        )),
    ];
    (
        any::<bool>(),
        projection,
        "[/a-z' ]{0,6}",
        proptest::option::of(expr()),
        proptest::collection::vec((operand(), any::<bool>()), 0..3),
        proptest::option::of(any::<u64>()),
        proptest::option::of(1i64..=i64::MAX),
        any::<bool>(),
    )
        .prop_map(
            |(explain, projection, from, filter, order, limit, at_revision, serializable)| Query {
                explain,
                projection,
                from,
                filter,
                order: order
                    .into_iter()
                    .map(|(operand, desc)| Order { operand, desc })
                    .collect(),
                limit,
                at_revision,
                serializable,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn printed_queries_parse_back_to_themselves(q in query()) {
        let text = q.to_string();
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(&back, &q, "{}", text);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn any_text_parses_or_fails_with_a_position_inside_it(text in "[ -~\n\u{e9}]{0,60}") {
        if let Err(e) = parse(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
            prop_assert!(e.column >= 1);
        }
    }

    #[test]
    fn keyword_soup_never_panics(words in proptest::collection::vec(prop_oneof![
        Just("SELECT"), Just("*"), Just("FROM"), Just("'p'"), Just("WHERE"), Just("a"),
        Just("="), Just("1"), Just("AND"), Just("OR"), Just("NOT"), Just("("), Just(")"),
        Just("IN"), Just("BETWEEN"), Just("IS"), Just("MISSING"), Just("ORDER"), Just("BY"),
        Just("LIMIT"), Just("AT"), Just("REVISION"), Just(","), Just("."), Just("COUNT"),
    ], 0..20)) {
        let _ = parse(&words.join(" "));
    }
}
