// htpasswd prints one htpasswd line with a bcrypt hash (the only format the distribution
// registry's htpasswd auth accepts), so tests need neither apache2-utils nor python bcrypt.
//
// Usage: htpasswd USER PASSWORD   ->   USER:$2a$10$...
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	if len(os.Args) != 3 || os.Args[1] == "" || strings.Contains(os.Args[1], ":") {
		fmt.Fprintln(os.Stderr, "usage: htpasswd USER PASSWORD   (USER without ':')")
		os.Exit(2)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(os.Args[2]), bcrypt.DefaultCost)
	if err != nil {
		fmt.Fprintln(os.Stderr, "htpasswd:", err)
		os.Exit(1)
	}
	fmt.Printf("%s:%s\n", os.Args[1], hash)
}
