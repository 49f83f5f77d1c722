module flashsdpa.example/attention

go 1.19
