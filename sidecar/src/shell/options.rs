//! Command-line options read the way `getopt_long` reads them: short options clustered
//! (`-abc`, `-n5`, `-n 5`), long options with `=` or the next word as their argument, and
//! GNU abbreviations of long options (`--adj` for `--adjustment`).

use super::tables::Options;

/// One option as read: its canonical name (`-n` or `--adjustment`) and argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    pub name: String,
    pub value: Option<String>,
}

/// Why the options could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptError {
    pub word: String,
    pub why: String,
}

fn err(word: &str, why: impl Into<String>) -> OptError {
    OptError {
        word: word.to_owned(),
        why: why.into(),
    }
}

/// The long option a word names, exactly or by a unique abbreviation.
pub fn long_name<'a>(table: &'a Options, given: &str) -> Result<&'a str, String> {
    let all = table
        .long_arg
        .iter()
        .chain(table.long_optional)
        .chain(table.long_flag);
    let mut matches: Vec<&str> = Vec::new();
    for name in all {
        if *name == given {
            return Ok(name);
        }
        if name.starts_with(given) && !matches.contains(name) {
            matches.push(name);
        }
    }
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("unknown option --{given}")),
        _ => Err(format!("--{given} is ambiguous ({})", matches.join(", "))),
    }
}

/// Read options from `words` until the first word that is not one (or `--`). Returns the
/// options and the index of the first remaining word.
pub fn parse(table: &Options, words: &[String]) -> Result<(Vec<Opt>, usize), OptError> {
    let mut opts = Vec::new();
    let mut i = 0;
    while let Some(w) = words.get(i) {
        if w == "--" {
            return Ok((opts, i + 1));
        }
        if w == "-" {
            if table.dash_is_option {
                opts.push(Opt {
                    name: "-".into(),
                    value: None,
                });
                i += 1;
                continue;
            }
            break;
        }
        if let Some(long) = w.strip_prefix("--") {
            let (given, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let name = long_name(table, given).map_err(|why| err(w, why))?;
            let value = if table.long_arg.contains(&name) {
                match attached {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        Some(
                            words
                                .get(i)
                                .cloned()
                                .ok_or_else(|| err(w, format!("--{name} needs an argument")))?,
                        )
                    }
                }
            } else if table.long_optional.contains(&name) {
                attached
            } else if attached.is_some() {
                return Err(err(w, format!("--{name} takes no argument")));
            } else {
                None
            };
            opts.push(Opt {
                name: format!("--{name}"),
                value,
            });
            i += 1;
            continue;
        }
        let Some(cluster) = w.strip_prefix('-') else {
            break;
        };
        if table.numeric && cluster.chars().all(|c| c.is_ascii_digit()) {
            opts.push(Opt {
                name: "-NUM".into(),
                value: Some(cluster.to_owned()),
            });
            i += 1;
            continue;
        }
        for (at, c) in cluster.char_indices() {
            let rest = &cluster[at + c.len_utf8()..];
            if table.short_arg.contains(c) {
                let value = if rest.is_empty() {
                    i += 1;
                    words
                        .get(i)
                        .cloned()
                        .ok_or_else(|| err(w, format!("-{c} needs an argument")))?
                } else {
                    rest.to_owned()
                };
                opts.push(Opt {
                    name: format!("-{c}"),
                    value: Some(value),
                });
                break;
            }
            if table.short_optional.contains(c) {
                opts.push(Opt {
                    name: format!("-{c}"),
                    value: (!rest.is_empty()).then(|| rest.to_owned()),
                });
                break;
            }
            if table.short_flag.contains(c) {
                opts.push(Opt {
                    name: format!("-{c}"),
                    value: None,
                });
                continue;
            }
            return Err(err(w, format!("unknown option -{c}")));
        }
        i += 1;
    }
    Ok((opts, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::tables::wrapper;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn short_long_and_abbreviated_options() {
        let nice = &wrapper("nice").expect("nice").options;
        let (o, i) = parse(nice, &words(&["--adj", "5", "rm", "-rf"])).expect("parse");
        assert_eq!(o[0].name, "--adjustment");
        assert_eq!(o[0].value.as_deref(), Some("5"));
        assert_eq!(i, 2);
        let (o, i) = parse(nice, &words(&["-n5", "rm"])).expect("parse");
        assert_eq!((o[0].value.as_deref(), i), (Some("5"), 1));
        let (_, i) = parse(nice, &words(&["-10", "rm"])).expect("parse");
        assert_eq!(i, 1);
        let xargs = &wrapper("xargs").expect("xargs").options;
        let (_, i) = parse(xargs, &words(&["-P", "4", "-0", "rm"])).expect("parse");
        assert_eq!(i, 3);
        let (_, i) = parse(xargs, &words(&["-i", "rm"])).expect("parse");
        assert_eq!(i, 1);
        assert!(parse(xargs, &words(&["-Q", "rm"])).is_err());
    }
}
