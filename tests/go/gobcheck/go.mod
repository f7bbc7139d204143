module gobcheck

go 1.19
