//! Documentation generated from the command line's own definition: shell
//! completions and the man page, so they never drift from the flags.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::Cli;

/// `orch completions <shell>`: the shell's completion script on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orch", &mut script);
    emit(&script)
}

/// `orch man`: the man page (roff) on stdout, subcommands included.
pub(crate) fn man() -> ExitCode {
    let command = Cli::command();
    let mut page = Vec::new();
    let rendered = clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .and_then(|()| {
            for sub in command
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            {
                let name = format!("orch {}", sub.get_name());
                writeln!(page, ".SH \"{}\"", name.to_uppercase())?;
                let man = clap_mangen::Man::new(sub.clone().bin_name(name));
                man.render_description_section(&mut page)?;
                man.render_options_section(&mut page)?;
            }
            Ok(())
        });
    if let Err(e) = rendered {
        crate::output::say(&format!("orch: error: cannot render the man page: {e}"));
        return ExitCode::from(crate::exit::FAILED);
    }
    emit(&page)
}

/// Writes to stdout; a reader that went away is no error.
fn emit(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            crate::output::say(&format!("orch: error: cannot write: {e}"));
            ExitCode::from(crate::exit::FAILED)
        }
    }
}
