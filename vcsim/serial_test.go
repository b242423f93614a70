package vcsim

import "testing"

func TestSoapMethod(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Header><operationID>x</operationID></soapenv:Header><soapenv:Body>
  <ReconfigVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">vm-1</_this></ReconfigVM_Task></soapenv:Body></soapenv:Envelope>`, "ReconfigVM_Task"},
		{`<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><FindByUuid xmlns="urn:vim25"><_this type="SearchIndex">SearchIndex</_this></FindByUuid></Body></Envelope>`, "FindByUuid"},
		{`<Envelope><Header/><Body/></Envelope>`, ""},
		{`not xml`, ""},
	} {
		if got := soapMethod([]byte(tc.body)); got != tc.want {
			t.Errorf("soapMethod(%.40q) = %q, want %q", tc.body, got, tc.want)
		}
	}
}
