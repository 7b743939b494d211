fn main() -> std::process::ExitCode {
    model_server::cli::main::<supervised_svc::Supervised>()
}
