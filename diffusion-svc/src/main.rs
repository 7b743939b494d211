fn main() -> std::process::ExitCode {
    model_server::cli::main::<diffusion_svc::Diffusion>()
}
