//! `edgeseek`: the appliance daemon and its admin commands.

fn main() -> std::process::ExitCode {
    edgeseek::cli::main()
}
