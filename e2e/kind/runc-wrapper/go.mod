module hybridorch.dev/e2e/kind/runc-wrapper

go 1.22
