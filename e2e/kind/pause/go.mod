module hybridorch.dev/e2e/kind/pause

go 1.22
