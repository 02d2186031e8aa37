use std::process::ExitCode;

fn main() -> ExitCode {
    ketch::cli::main()
}
