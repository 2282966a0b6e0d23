//! The configuration reference in README.md, rendered from the clap definitions, so that a
//! flag's environment variable, default and meaning are written once (on the `Cli` structs)
//! and the README cannot drift from what the binary accepts. `tests/readme.rs` fails when the
//! README's copy differs and rewrites it under `UPDATE_README=1`.
//!
//! Conventions the renderer reads from the doc comments:
//! - the help text is the meaning column, without its final period, as in `--help`;
//! - an option without a clap default may end its help with `Default: <what happens>.`,
//!   which moves to the default column (`--workers` defaults to the CPUs available);
//! - a value enum's variants document themselves, and each becomes `` `name`: help. ``

use std::fmt::Write;

use clap::{Arg, ArgAction, Command, CommandFactory};

use super::{Cli, ENVIRONMENT_ONLY};

/// The first line of the generated block: where it comes from and how to refresh it.
pub const GENERATED_NOTE: &str = "<!-- Generated from the doc comments in src/config.rs; \
    edit those, then run `UPDATE_README=1 cargo test --test readme` (or `make readme`). -->";

/// Subcommands the README documents, in the order it documents them; `serve` comes first
/// because the others list only the options they do not share with it.
const SUBCOMMANDS: &[&str] = &["serve", "ocr", "healthcheck"];

/// The Markdown between the README's `<!-- config:start -->` and `<!-- config:end -->`
/// markers: one table per subcommand, ending with a newline.
pub fn reference() -> String {
    let mut cli = Cli::command();
    // Propagates global options (`--log-format`) into every subcommand.
    cli.build();
    let find = |name: &str| {
        cli.find_subcommand(name)
            .unwrap_or_else(|| panic!("no `{name}` subcommand"))
    };
    let serve = find(SUBCOMMANDS[0]);
    let serve_rows: Vec<Row> = documented(serve).map(Row::from).collect();

    let mut out = String::new();
    writeln!(out, "{GENERATED_NOTE}").unwrap();
    for (index, name) in SUBCOMMANDS.iter().enumerate() {
        let command = find(name);
        writeln!(out).unwrap();
        heading(&mut out, command);
        let rows: Vec<Row> = documented(command).map(Row::from).collect();
        let (shared, own): (Vec<Row>, Vec<Row>) = if index == 0 {
            (Vec::new(), rows)
        } else {
            rows.into_iter().partition(|row| serve_rows.contains(row))
        };
        table(&mut out, &own, index == 0);
        if !shared.is_empty() {
            let flags: Vec<&str> = shared.iter().map(|row| row.flag.as_str()).collect();
            writeln!(out).unwrap();
            writeln!(out, "Also {}, as for `serve`.", flags.join(", ")).unwrap();
        }
    }
    out
}

/// `### `tesserve ocr FILES…`` and the subcommand's one-line description.
fn heading(out: &mut String, command: &Command) {
    let positionals: String = command
        .get_positionals()
        .filter(|arg| !arg.is_hide_set())
        .map(|arg| format!(" {}", value_name(arg)))
        .collect();
    writeln!(out, "### `tesserve {}{positionals}`", command.get_name()).unwrap();
    if let Some(about) = command.get_about() {
        writeln!(out).unwrap();
        writeln!(out, "{}.", sentence(&about.to_string())).unwrap();
    }
    writeln!(out).unwrap();
}

fn table(out: &mut String, rows: &[Row], environment_only: bool) {
    writeln!(out, "| flag | environment | default | meaning |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    for row in rows {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.flag, row.env, row.default, row.meaning
        )
        .unwrap();
    }
    if environment_only {
        for variable in ENVIRONMENT_ONLY {
            writeln!(
                out,
                "| | `{}` | {} | {} |",
                variable.name,
                cell(variable.default),
                cell(variable.meaning)
            )
            .unwrap();
        }
    }
}

/// The arguments a user can pass: not `--help`/`--version`, not hidden.
fn documented(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        !arg.is_hide_set()
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// One table row, already as Markdown cells.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    flag: String,
    env: String,
    default: String,
    meaning: String,
}

impl From<&Arg> for Row {
    fn from(arg: &Arg) -> Row {
        let flag = match arg.get_long() {
            Some(long) => {
                let mut flag = format!("`--{long}`");
                // Hidden aliases too: they are the KServe spellings people will look for.
                for alias in arg.get_all_aliases().unwrap_or_default() {
                    write!(flag, " (also `--{alias}`)").unwrap();
                }
                flag
            }
            None => format!("`{}`", value_name(arg)),
        };
        let env = arg
            .get_env()
            .map(|name| format!("`{}`", name.to_string_lossy()))
            .unwrap_or_default();

        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|help| sentence(&help.to_string()))
            .unwrap_or_default();
        // "…. Default: the rate, rounded up" documents what an unset option means.
        let (mut meaning, stated_default) = match help.split_once("Default: ") {
            Some((before, after)) => (before.trim_end().to_owned(), Some(after.to_owned())),
            None => (help.clone(), None),
        };
        if meaning.ends_with('.') {
            meaning.pop();
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .filter_map(|value| {
                let help = value.get_help()?;
                let help = lowercase_first(&sentence(&help.to_string()));
                Some(format!("`{}`: {help}.", value.get_name()))
            })
            .collect();
        if !values.is_empty() {
            meaning = format!("{meaning}. {}", values.join(" "));
            meaning.pop();
        }

        let default = if matches!(arg.get_action(), ArgAction::SetTrue) {
            "off".to_owned()
        } else if !arg.get_default_values().is_empty() {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            let mut default = format!("`{}`", values.join(","));
            if let Some(mib) = mebibytes(arg, &values) {
                write!(default, " ({mib} MiB)").unwrap();
            }
            default
        } else if let Some(stated) = stated_default {
            stated
        } else if arg.get_long().is_none() {
            "required".to_owned()
        } else {
            "unset".to_owned()
        };

        Row {
            flag,
            env,
            default: cell(&default),
            meaning: cell(&meaning),
        }
    }
}

/// A byte-size default in MiB, when it is a whole number of them: `67108864` alone is hard
/// to read.
fn mebibytes(arg: &Arg, values: &[String]) -> Option<u64> {
    let bytes: u64 = match values {
        [one] if arg.get_long()?.ends_with("-bytes") => one.parse().ok()?,
        _ => return None,
    };
    (bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20)).then_some(bytes >> 20)
}

/// `FILES…` for a positional argument that takes several values.
fn value_name(arg: &Arg) -> String {
    let name = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    let many = arg
        .get_num_args()
        .is_some_and(|range| range.max_values() > 1);
    if many {
        format!("{name}…")
    } else {
        name
    }
}

/// Help text as one line without its final period (clap drops it from one-paragraph help
/// but keeps it in multi-paragraph help).
fn sentence(help: &str) -> String {
    let mut line = help.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.ends_with('.') && !line.ends_with("..") {
        line.pop();
    }
    line
}

/// "Plain lines" reads as "`text`: plain lines"; "JSON …" stays as it is.
fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_owned(),
    }
}

/// Text that is safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_option_has_a_row_with_its_environment_variable() {
        let reference = reference();
        let mut cli = Cli::command();
        cli.build();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in documented(serve) {
            let long = arg.get_long().unwrap();
            let row = reference
                .lines()
                .find(|line| line.starts_with(&format!("| `--{long}`")))
                .unwrap_or_else(|| panic!("no row for --{long}"));
            if let Some(env) = arg.get_env() {
                assert!(row.contains(&*env.to_string_lossy()), "{row}");
            }
        }
    }

    #[test]
    fn kserve_spellings_and_stated_defaults_reach_the_table() {
        let reference = reference();
        assert!(reference.contains("`--model-name` (also `--model_name`)"));
        assert!(reference.contains("`67108864` (64 MiB)"));
        let workers = reference
            .lines()
            .find(|line| line.starts_with("| `--workers`"))
            .unwrap();
        assert!(workers.contains("| the CPUs available"), "{workers}");
        assert!(!workers.contains("Default:"), "{workers}");
    }

    #[test]
    fn the_tessdata_default_names_the_first_place_searched() {
        let reference = reference();
        assert!(reference.contains(super::super::TESSDATA_SEARCH_PATH[0]));
    }
}
